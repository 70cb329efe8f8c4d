"""Access control for the server: one middleware in front of every route family, plus
``/api/whoami-v2``. The decisions live in ``registry/auth``; this module only reads the request
(which family, which repo), asks, answers refusals in the Hub's shapes, and feeds the audit.

Refusals are what huggingface_hub turns into its usual exceptions: 401 with ``Invalid credentials
in Authorization header`` for a bad token, 401 ``RepoNotFound`` for an anonymous caller where a
token is required, 404 ``RepoNotFound`` for a private repo (the same words as a missing one),
``GatedRepo`` for a gated repo without an approval, 403 for a scope or repo-pattern refusal, 429
with ``Retry-After`` for the abuse limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import select

from ..auth.audit import AuditWriter
from ..auth.policy import (
    AccessState,
    AuthOptions,
    Principal,
    check_family,
    check_repo,
    invalid_credentials,
    not_found,
)
from ..auth.throttle import FailureThrottle, TokenRateLimiter
from ..errors import DepotError, TooManyRequests
from ..models import Repo
from ..units import iso_z
from .app import DEPOT

log = logging.getLogger("modeldepot.auth")

ACCESS = web.AppKey("access", object)
PRINCIPAL = web.RequestKey("principal", object)
# the caller a listing must be filtered for (registry.auth.visibility.listing_filter)
VIEWER = web.RequestKey("viewer", object)
WHOAMI = "/api/whoami-v2"


@dataclass
class Route:
    """What a request is, for access control and the audit."""

    family: str  # open, hub, inference, metrics, docs, whoami, other
    kind: str  # the audit's word: download, metadata, list, inference, ...
    repo_type: str | None = None
    names: list[str] = field(default_factory=list)  # candidate repo ids, in the handler's order
    path: str | None = None


def _inference_name(spec: str) -> str:
    return spec.partition("@")[0]


async def classify(request: web.Request) -> Route:
    from .hub_api import parse_api, parse_resolve

    path, method = request.path, request.method
    if path == "/health":
        return Route("open", "health")
    if path == "/metrics":
        return Route("metrics", "metrics")
    if path in ("/docs", "/openapi.json"):
        return Route("docs", "docs")
    if path == WHOAMI:
        return Route("whoami", "whoami")
    if path == "/" or path == "/ui" or path.startswith(("/ui/static/", "/ui/login", "/ui/logout")):
        return Route("open", "ui")  # the way in: the sign-in form and its assets
    if path.startswith("/ui/"):
        if path == "/ui/ops":
            return Route("ui-ops", "page")
        for kind, repo_type in (("models", "model"), ("datasets", "dataset")):
            prefix = f"/ui/{kind}/"
            if path.startswith(prefix) and len(path) > len(prefix):
                return Route("ui", "metadata", repo_type, [path[len(prefix):]])
        return Route("ui", "page")
    if path in ("/api/models", "/api/datasets"):
        return Route("hub", "list")
    raw = request.raw_path.split("?", 1)[0]
    for kind, repo_type in (("models", "model"), ("datasets", "dataset")):
        prefix = f"/api/{kind}/"
        if raw.startswith(prefix):
            targets = parse_api(raw[len(prefix):])
            # the same readings hub_api.api_handler keeps
            targets = [t for t in targets if (t.action == "paths-info") == (method == "POST")]
            return Route("hub", "metadata", repo_type, [t.repo for t in targets])
    if method == "POST":
        if path.startswith("/models/") and len(path) > len("/models/"):
            return Route("inference", "inference", "model", [_inference_name(path[8:])])
        if path.startswith("/pipeline/") and path.count("/") >= 3:
            return Route("inference", "inference", "model",
                         [_inference_name(path.split("/", 3)[3])])
        if path == "/v1/embeddings":
            names: list[str] = []
            try:
                body = json.loads(await request.text())
                if isinstance(body, dict) and isinstance(body.get("model"), str):
                    names = [_inference_name(body["model"])]
            except (ValueError, UnicodeDecodeError, web.HTTPException):
                pass  # the handler refuses the body; nothing is loaded
            return Route("inference", "inference", "model", names)
    if method in ("GET", "HEAD"):
        repo_type, targets = parse_resolve(raw.lstrip("/"))
        if targets:
            return Route("hub", "download" if method == "GET" else "metadata", repo_type,
                         [t.repo for t in targets], targets[0].path)
    return Route("other", "other")


class AccessControl:
    """Per app: the in-memory view of the registry, the abuse limits and the audit writer."""

    def __init__(self, depot, options: AuthOptions):
        self.depot = depot
        self.options = options
        self.state = AccessState()
        self.audit = AuditWriter(depot, options.audit_flush_s) if options.audit else None
        self.failures = FailureThrottle(options.max_failures, options.failure_window_s,
                                        options.lockout_s)
        self.rate = TokenRateLimiter(options.token_rate) if options.token_rate else None
        self._refresher: asyncio.Task | None = None

    async def reload(self) -> None:
        self.state = await asyncio.to_thread(AccessState.load, self.depot)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_s)
            try:
                await self.reload()
            except Exception:  # a busy or unreachable database: keep deciding on the last view
                log.exception("reloading tokens and approvals failed; keeping the previous view")

    async def start(self, _app) -> None:
        await self.reload()
        if self.state.tokens and self.state.key is None:
            log.warning("the auth key file is missing: no token will be accepted")
        elif not self.state.tokens and self.options.mode != "none":
            log.warning("access control is on (--auth %s) and there are no tokens yet: create "
                        "one with 'modeldepot token create NAME'", self.options.mode)
        self._refresher = asyncio.create_task(self._refresh_loop())
        if self.audit is not None:
            await self.audit.start()

    async def stop(self, _app) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.audit is not None:
            await self.audit.stop()

    def record(self, entry: dict) -> None:
        if self.audit is not None:
            self.audit.add(entry)

    async def pick(self, route: Route) -> str:
        """The repo the handler will read: the first candidate that exists."""
        if len(route.names) == 1:
            return route.names[0]

        def existing() -> set[str]:
            with self.depot.db.session() as s:
                return set(s.scalars(select(Repo.name).where(
                    Repo.type == route.repo_type, Repo.name.in_(route.names))))

        found = await asyncio.to_thread(existing)
        return next((n for n in route.names if n in found), route.names[0])

    def authenticate(self, request: web.Request, client: str) -> Principal | None:
        header = request.headers.get("Authorization")
        if header is None and request.cookies.get(UI_COOKIE):
            # the web page's sign-in keeps the token in an HttpOnly, SameSite=Strict cookie
            header = f"Bearer {request.cookies[UI_COOKIE]}"
        try:
            return self.state.authenticate(header)
        except DepotError:
            if self.options.mode == "none":
                # no access control: a stray token (say, one for huggingface.co) is ignored
                return None
            self.failures.failed(client)
            raise


UI_COOKIE = "modeldepot_token"


def check_token(request: web.Request, secret: str) -> str | None:
    """The web page's sign-in: the name of the active token ``secret`` is, or None (counted as
    a failed authentication from the client's address, like a bad Authorization header)."""
    ac: AccessControl = request.app[ACCESS]
    try:
        principal = ac.state.authenticate(f"Bearer {secret}")
    except DepotError:
        ac.failures.failed(request.remote or "")
        return None
    return principal.name if principal else None


def viewer_of(request: web.Request):
    """The Principal a listing must be filtered for; None when access control is off."""
    return request.get(VIEWER)


def refusal(e: DepotError, route: Route) -> web.Response:
    from .hub_api import error_response

    if route.family == "inference":  # the inference API's own error shape (no X-Error-*)
        response = web.json_response(e.to_json(), status=e.http_status)
    else:
        response = error_response(e)
    if e.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="modeldepot"'
    if isinstance(e, TooManyRequests):
        response.headers["Retry-After"] = str(e.retry_after)
    return response


def _measure(response: web.StreamResponse, entry: dict, ac: AccessControl) -> None:
    """Record the download when its bytes have gone out, or as aborted with what had gone out.

    aiohttp sends a FileResponse with sendfile inside ``prepare``; asyncio leaves the file
    position just past the last byte the kernel took, also when the client went away mid-way.
    """
    sent: list[int] = []
    if hasattr(response, "sent_bytes"):  # files.BlobResponse counts what it sent itself
        orig = response.prepare

        async def prepare_blob(request):
            try:
                writer = await orig(request)
            except BaseException:
                ac.record({**entry, "status": response.status, "bytes_sent": response.sent_bytes,
                           "outcome": "aborted"})
                raise
            ac.record({**entry, "status": response.status, "bytes_sent": response.sent_bytes,
                       "outcome": "ok"})
            return writer

        response.prepare = prepare_blob
        return
    orig_sendfile = getattr(response, "_sendfile", None)
    if orig_sendfile is not None:
        async def sendfile(request, fobj, offset, count):
            try:
                return await orig_sendfile(request, fobj, offset, count)
            finally:
                try:
                    sent.append(os.lseek(fobj.fileno(), 0, os.SEEK_CUR) - offset)
                except (OSError, ValueError):
                    pass

        response._sendfile = sendfile
    orig_prepare = response.prepare

    async def prepare(request):
        try:
            writer = await orig_prepare(request)
        except BaseException:
            ac.record({**entry, "status": response.status, "bytes_sent": max(sum(sent), 0),
                       "outcome": "aborted"})
            raise
        ac.record({**entry, "status": response.status, "bytes_sent": max(sum(sent), 0),
                   "outcome": "ok"})
        return writer

    response.prepare = prepare


@web.middleware
async def access_control(request: web.Request, handler):
    ac: AccessControl = request.app[ACCESS]
    route = await classify(request)
    if route.family == "open":
        return await handler(request)
    options = ac.options
    client = request.remote or ""
    entry = {"client": client, "method": request.method, "kind": route.kind,
             "repo_type": route.repo_type, "repo": route.names[0] if route.names else None,
             "path": route.path}
    restricted = False
    try:
        wait = ac.failures.retry_after(client)
        if wait is not None:
            raise TooManyRequests(f"too many failed authentications from {client}: try again in "
                                  f"{wait} s", retry_after=wait, reason="failed-auth lockout")
        try:
            principal = ac.authenticate(request, client)
        except DepotError as e:
            entry["token"] = e.details.get("token")
            raise
        entry["token"] = principal.name if principal else None
        request[PRINCIPAL] = principal  # also for a refusal page's "signed in as"
        if route.family == "whoami":
            if principal is None:
                raise invalid_credentials("no token")
        elif options.mode != "none":
            if ac.rate is not None and principal is not None:
                wait = ac.rate.retry_after(principal.name)
                if wait is not None:
                    raise TooManyRequests(f"token {principal.name!r} is over its rate limit of "
                                          f"{options.token_rate:g} requests/s: retry in {wait} s",
                                          retry_after=wait, reason="token rate limit")
            check_family(principal, route.family, options, names_repo=bool(route.names))
        if route.names:
            name = route.names[0] if len(route.names) == 1 else await ac.pick(route)
            entry["repo"] = name
            flags = ac.state.flags(route.repo_type, name)
            restricted = flags is not None
            check_repo(principal, route.repo_type, name, flags, options, route.family)
    except DepotError as e:
        ac.record({**entry, "status": e.http_status, "bytes_sent": 0, "outcome": "refused",
                   "reason": e.details.get("reason")})
        if route.family in ("ui", "ui-ops"):
            from .ui import refusal_page

            return refusal_page(request, e)
        return refusal(e, route)
    request[PRINCIPAL] = principal
    if options.mode != "none":
        request[VIEWER] = principal or Principal()
    audited = route.kind in ("download", "inference") or (route.kind == "metadata" and restricted)
    if not audited and not route.names:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as e:
        if audited:
            ac.record({**entry, "status": e.status, "bytes_sent": 0, "outcome": "ok"})
        raise
    if (response.status == 404 and route.names and route.family == "hub"
            and _hidden_twin(ac, principal, route, entry["repo"])):
        # the handler's "it is a dataset repo" hint would reveal a private repo of the other type
        response = refusal(not_found(route.family, route.repo_type, entry["repo"]), route)
    if not audited:
        return response
    entry["commit"] = response.headers.get("X-Repo-Commit")
    if response.prepared and hasattr(response, "sent_bytes"):  # proxy.Streamed: already sent
        ac.record({**entry, "status": response.status, "bytes_sent": response.sent_bytes,
                   "outcome": response.outcome})
    elif route.kind == "download" and (isinstance(response, web.FileResponse)
                                     or hasattr(response, "sent_bytes")):
        _measure(response, entry, ac)
    else:
        ac.record({**entry, "status": response.status, "bytes_sent": 0, "outcome": "ok"})
    return response


def _hidden_twin(ac: AccessControl, principal, route: Route, name: str) -> bool:
    """Is there a repo of the same name and the other type that this caller may not see?"""
    other = "dataset" if route.repo_type == "model" else "model"
    flags = ac.state.flags(other, name)
    if flags is None or not flags.private or ac.options.mode == "none":
        return False
    return not (principal or Principal()).approved(other, name)


def enforce_upstream(request: web.Request, repo_type: str, name: str, *, private: bool = False,
                     gated: str | None = None) -> None:
    """For a handler that learns a repo's flags only from an upstream (the pull-through proxy,
    before the repo is in the registry): raise the same refusal the middleware would, recorded
    in the audit. Call it before sending anything; a no-op when access control is off."""
    from ..auth.policy import RepoFlags

    ac = request.app.get(ACCESS)
    if ac is None or ac.options.mode == "none":
        return
    flags = RepoFlags(private, gated) if private or gated else None
    try:
        check_repo(request.get(PRINCIPAL), repo_type, name, flags, ac.options)
    except DepotError as e:
        principal = request.get(PRINCIPAL)
        ac.record({"client": request.remote, "method": request.method, "kind": "upstream",
                   "repo_type": repo_type, "repo": name, "status": e.http_status,
                   "token": principal.name if principal else None, "bytes_sent": 0,
                   "outcome": "refused", "reason": e.details.get("reason")})
        raise


def _role(scopes: frozenset) -> str:
    return "write" if scopes & {"write", "admin"} else "read"


async def whoami_handler(request: web.Request) -> web.Response:
    """The shape ``huggingface_hub.whoami()``, ``hf auth whoami`` and ``login`` read."""
    principal: Principal = request[PRINCIPAL]
    token = principal.token
    return web.json_response({
        "type": "user",
        "id": f"{token.id:024x}",
        "name": token.name,
        "fullname": token.name,
        "isPro": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {
            "displayName": token.name,
            "role": _role(token.scopes),
            "createdAt": iso_z(token.created_at),
            "expiresAt": iso_z(token.expires_at),
            "scopes": sorted(token.scopes),
            "repos": list(token.repos) or ["*"],
        }},
    })


def setup(app: web.Application, options: AuthOptions) -> None:
    """Install before the Hub API (its catch-all route would shadow whoami-v2)."""
    ac = AccessControl(app[DEPOT], options)
    app[ACCESS] = ac
    app.on_startup.append(ac.start)
    app.on_cleanup.append(ac.stop)
    app.middlewares.append(access_control)
    app.router.add_get(WHOAMI, whoami_handler)
    from . import ui
    from ..auth.audit import records

    app[ui.TOKEN_CHECK] = check_token
    app[ui.ACCESS_AUDIT] = lambda **kw: records(app[DEPOT], **kw)
