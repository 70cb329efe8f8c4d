"""Connections under bounds: timeouts, connection limits, and the open-file limit.

aiohttp gives the idle (keep-alive) timeout and header size limits; it has no header, body or
write timeout and no connection limit. They live here, in a ``RequestHandler`` subclass (one per
connection) and a ``Server`` subclass (the factory that counts connections), run by
:class:`GuardedRunner` in place of ``web.AppRunner``:

* **header timeout**: from a request's first byte (or the connection's start) to its last
  header line; a slowloris connection is closed.
* **body timeout**: the longest silence while a request body is still arriving.
* **write timeout**: the longest a response makes no progress (the client stopped reading);
  files are sent in pieces bounded by the same timeout (``files.py``).
* **idle timeout**: aiohttp's keep-alive timeout.
* **connection limits**: overall (by default derived from the open-file limit, two descriptors a
  download: the socket and the file) and per client address. A connection over a limit is
  answered ``503`` with ``Retry-After`` and closed; it never reaches the app.

One timer per server sweeps the connections (``SWEEP_S``): the cost is bounded by the number of
connections, not by the number of bytes or requests.
"""

from __future__ import annotations

import collections
import json
import logging
import resource

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .http import RETRY_AFTER_S, SERVER_NAME
from .options import HttpOptions

log = logging.getLogger("modeldepot.server")

SWEEP_S = 0.5
RESERVED_FDS = 64        # the registry, logs, model files, the listening socket...
MAX_CONNECTIONS = 8192   # the default ceiling, whatever the open-file limit
NOFILE_TARGET = 1 << 20  # how far the soft open-file limit is raised at start (within the hard one)


def raise_open_file_limit(target: int = NOFILE_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (many systems start at 1,024 while
    allowing far more); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, e)
    return soft


def default_max_connections(nofile: int) -> int:
    return max(16, min(MAX_CONNECTIONS, (nofile - RESERVED_FDS) // 2))


_PARSER_ERRORS = {  # aiohttp.http_exceptions, by name (the C and Python parsers share them)
    "BadHttpMethod": "the method is not an HTTP token",
    "BadStatusLine": "the request line is malformed",
    "LineTooLong": "a line of the request is too long",
    "InvalidHeader": "a header is malformed",
    "BadHttpMessage": "the request is not valid HTTP/1.1",
    "TransferEncodingError": "the body's chunked framing is invalid",
    "ContentLengthError": "the body does not match its Content-Length",
    "InvalidURLError": "the request target is not a valid URL",
}


class GuardedHandler(RequestHandler):
    """One connection: the aiohttp protocol plus the clocks the sweeper reads."""

    def __init__(self, manager: "GuardedServer", **kwargs):
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._client = ""
        self._counted = False
        self.refused: str | None = None
        self._header_started: float | None = None
        self._last_data = 0.0
        self._paused_since: float | None = None

    # -- accounting ---------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, (tuple, list)) else str(peer or "")
        self.refused = self._guard.admit(self)
        self._counted = self.refused is None
        self._header_started = self._last_data = self._loop.time()
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._counted:
            self._counted = False
            self._guard.release(self)
        super().connection_lost(exc)

    async def _handle_request(self, request, start_time, request_handler):
        if self.refused is not None:
            request_handler = self._refuse
        return await super()._handle_request(request, start_time, request_handler)

    async def _refuse(self, request) -> web.Response:
        body = {"error": f"too many connections {self.refused}: retry shortly",
                "error_type": "Unavailable"}
        response = web.Response(text=json.dumps(body), status=503, content_type="application/json",
                                headers={"Retry-After": RETRY_AFTER_S, "Server": SERVER_NAME})
        response.force_close()
        return response

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp's parser refused (a bad method, request line, header or body
        framing), or an error past every middleware: the JSON error shape of every other answer,
        never the parser's text (which quotes the request's bytes)."""
        super().handle_error(request, status, exc, message)  # logs; raises if bytes went out
        if status >= 500:
            text, kind = "internal server error", "InternalError"
        else:
            why = _PARSER_ERRORS.get(type(exc).__name__, "the request is not valid HTTP/1.1")
            text, kind = f"malformed request: {why}", "BadRequest"
        response = web.Response(text=json.dumps({"error": text, "error_type": kind}),
                                status=status, content_type="application/json",
                                headers={"Server": SERVER_NAME})
        response.force_close()
        return response

    # -- clocks -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_data = now
        if self._header_started is None and not self._request_in_progress and not self._messages:
            self._header_started = now
        super().data_received(data)
        if self._messages:
            self._header_started = None

    def pause_writing(self) -> None:
        self._paused_since = self._loop.time()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._paused_since = None
        super().resume_writing()

    def overdue(self, now: float, o: HttpOptions) -> str | None:
        """Which timeout this connection has run past, if any."""
        # Also after the request: an answer left in the transport's buffer holds the socket.
        if self._paused_since is not None and now - self._paused_since > o.write_timeout:
            return "write"
        if self._request_in_progress:
            self._header_started = None
            request = self._current_request
            if request is not None and not request.content.is_eof():
                if self._reading_paused:  # the server is not reading: not the client's silence
                    self._last_data = now
                elif now - self._last_data > o.body_timeout:
                    return "body"
            return None
        if self._header_started is not None and not self._messages:
            if now - self._header_started > o.header_timeout:
                return "header"
        return None


class GuardedServer(Server):
    """The protocol factory: counts connections per client and overall, sweeps the clocks."""

    def __init__(self, handler, *, options: HttpOptions, max_connections: int, **kwargs):
        super().__init__(handler, **kwargs)
        self.options = options
        self.max_connections = max_connections
        self.open_connections = 0
        self.per_client: collections.Counter[str] = collections.Counter()
        self._sweep_handle = self._loop.call_later(SWEEP_S, self._sweep)

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: GuardedHandler) -> str | None:
        """None to admit; else why not (it then gets a 503)."""
        limit = self.options.max_connections_per_client
        if self.open_connections >= self.max_connections:
            why = f"(the server holds {self.max_connections})"
        elif limit and self.per_client[handler._client] >= limit:
            why = f"from {handler._client} (at most {limit} each)"
        else:
            self.open_connections += 1
            self.per_client[handler._client] += 1
            return None
        return why

    def release(self, handler: GuardedHandler) -> None:
        self.open_connections -= 1
        self.per_client[handler._client] -= 1
        if self.per_client[handler._client] <= 0:
            del self.per_client[handler._client]

    def _sweep(self) -> None:
        now = self._loop.time()
        for handler, transport in list(self._connections.items()):
            if handler.overdue(now, self.options) is not None:
                transport.abort()
        self._sweep_handle = self._loop.call_later(SWEEP_S, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:
        self._sweep_handle.cancel()
        await super().shutdown(timeout)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`GuardedServer`."""

    def __init__(self, app: web.Application, options: HttpOptions, max_connections: int,
                 **kwargs):
        kwargs.setdefault("keepalive_timeout", options.idle_timeout)
        super().__init__(app, **kwargs)
        self._options = options
        self._max_connections = max_connections

    async def _make_server(self) -> Server:
        plain = await super()._make_server()
        # The same arguments aiohttp's app gave its own Server, with the guarded factory.
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                             options=self._options, max_connections=self._max_connections,
                             **plain._kwargs)
