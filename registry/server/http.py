"""HTTP hygiene shared by every route family: errors, headers, methods, public links.

The order of the app's middlewares (outermost first) is part of the design:

1. ``ops.measure``      counts and times every request, so it sees the final status;
2. ``http.errors``      turns everything below it into a JSON answer: a ``DepotError`` into its
                        status (Hub ``X-Error-*`` headers included), an aiohttp ``HTTPException``
                        (404 of the router, 405 with ``Allow``, 413) into the same JSON shape, an
                        exhausted resource (open files, memory) into 503 + ``Retry-After``, and
                        anything else into a 500 whose body never carries exception text;
3. the access-control middleware (``registry/auth``) goes here, inside ``errors``, so that its
                        refusals get the same shape;
4. the route handlers.

Below the app, ``limits.py`` guards connections (timeouts, connection limits) and ``logs.py``
writes the access log. One ``on_response_prepare`` hook, :func:`clean_headers`, is the one place
header values are made safe: every value built from input passes it, however it was built.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import sqlite3

from aiohttp import web

from ..errors import DepotError, InvalidInput, Unavailable

log = logging.getLogger("modeldepot.server")
# The one body of every unexpected failure: the details go to the log, never to the client.
INTERNAL_ERROR = "internal error: the server log has the details"

SERVER_NAME = "modeldepot"  # no version: it only helps an attacker pick an exploit
RETRY_AFTER_S = "1"
HEADER_VALUE_LIMIT = 500
# RFC 9110 field values: visible ASCII, space and tab. Everything else (controls, DEL, and
# non-ASCII, which aiohttp would send as raw UTF-8) is replaced.
_UNSAFE = re.compile(r"[^\x20-\x7e\t]")
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ENOSPC}


def safe_header_value(value: str, limit: int = HEADER_VALUE_LIMIT) -> str:
    """``value`` as a header may carry it: one line of printable ASCII, at most ``limit``."""
    value = " ".join(str(value).split())
    return _UNSAFE.sub("?", value)[:limit]


async def clean_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no header value leaves unsafe, and ``Server`` names no version.

    aiohttp refuses a control character in a header by dropping the whole answer, so an
    unescaped ``?expand=%1B`` echoed in ``X-Error-Message`` would leave the client without one.
    """
    headers = response.headers
    for name, value in list(headers.items()):
        if _UNSAFE.search(value) or len(value) > 8000:
            headers[name] = safe_header_value(value, 8000)
    headers["Server"] = SERVER_NAME


# -- errors -------------------------------------------------------------------------------------


def error_headers(e: DepotError) -> dict:
    headers = {"X-Error-Message": safe_header_value(str(e))}
    if e.hub_code:
        headers["X-Error-Code"] = e.hub_code
    if e.details.get("commit"):
        headers["X-Repo-Commit"] = e.details["commit"]
    if e.http_status in (429, 503):
        headers["Retry-After"] = RETRY_AFTER_S
    return headers


def error_response(e: DepotError) -> web.Response:
    """A domain error as the Hub answers it: JSON body, ``X-Error-Code`` / ``X-Error-Message``."""
    return web.json_response(e.to_json(), status=e.http_status, headers=error_headers(e))


def exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the server running out of files or memory."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
            return True
        # SQLite reports an open() that failed for want of descriptors only as this text.
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def out_of_resources() -> Unavailable:
    return Unavailable("the server is out of resources (open files or memory) right now: "
                       "retry shortly")


_STATUS_TYPES = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed",
                 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType"}


def _http_exception(e: web.HTTPException) -> web.StreamResponse:
    if e.status < 400 or e.content_type == "application/json":
        return e
    message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
    if isinstance(e, web.HTTPMethodNotAllowed):
        message = f"{e.method} is not allowed here: use {', '.join(sorted(e.allowed_methods))}"
    headers = {k: v for k, v in e.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    headers["X-Error-Message"] = safe_header_value(message)
    body = {"error": message, "error_type": _STATUS_TYPES.get(e.status, e.reason.replace(" ", ""))}
    return web.json_response(body, status=e.status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler):
    try:
        response = await handler(request)
    except DepotError as e:
        return error_response(e)
    except web.HTTPException as e:
        return _http_exception(e)
    except Exception as e:  # noqa: BLE001 - the one place an unexpected failure is answered
        if exhausted(e):
            log.warning("out of resources answering %s %s: %s", request.method,
                        request.path[:200], type(e).__name__)
            return error_response(out_of_resources())
        log.exception("%s %s failed", request.method, request.path[:200])
        return web.json_response({"error": INTERNAL_ERROR, "error_type": "InternalError"},
                                 status=500)
    if isinstance(response, web.HTTPException):  # returned, not raised (older handlers)
        return _http_exception(response)
    return response


# -- methods ------------------------------------------------------------------------------------


async def not_found_or_405(request: web.Request, skip: web.AbstractResource) -> web.Response:
    """For a catch-all route: 405 with ``Allow`` when another route serves this path with other
    methods (``GET /v1/embeddings``), else the JSON 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is skip:
            continue
        _match, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound(text=f"no route for {request.path[:200]}")


def method_not_allowed(request: web.Request, allowed: set[str]) -> web.HTTPMethodNotAllowed:
    if "GET" in allowed:
        allowed = allowed | {"HEAD"}
    return web.HTTPMethodNotAllowed(request.method, sorted(allowed))


# -- absolute links -----------------------------------------------------------------------------


def _host_of(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def public_base(request: web.Request, public_url: str | None, allowed_hosts: list[str]) -> str:
    """The base URL for absolute links, never taken blindly from the ``Host`` header.

    ``--public-url`` wins; else the ``Host`` header when its host is in ``--allowed-host``;
    else the address the client connected to (which it can reach, and cannot forge).
    """
    if public_url:
        return public_url.rstrip("/")
    host = request.headers.get("Host", "")
    if host and allowed_hosts and _host_of(host).lower() in {h.lower() for h in allowed_hosts}:
        return f"{request.scheme}://{safe_header_value(host, 300)}"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return f"{request.scheme}://127.0.0.1"
    address, port = sockname[0], sockname[1]
    if ipaddress.ip_address(address.split("%", 1)[0]).version == 6:
        address = f"[{address}]"
    return f"{request.scheme}://{address}:{port}"


def setup(app: web.Application) -> None:
    app.middlewares.append(errors)
    app.on_response_prepare.append(clean_headers)


async def read_form(request: web.Request):
    """The request's form fields; a body that cannot be decoded (an unknown charset, multipart
    without a boundary) is the client's error, not the server's."""
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except (ValueError, LookupError, UnicodeDecodeError, AssertionError, KeyError) as e:
        raise InvalidInput("the body could not be read as a form "
                           f"({type(e).__name__}): send application/x-www-form-urlencoded "
                           "(paths=a&paths=b) or multipart/form-data with a boundary") from None
