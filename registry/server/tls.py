"""TLS for `modeldepot serve --tls-cert FILE --tls-key FILE`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl

from aiohttp import web

from ..errors import InvalidInput


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with the ssl module's secure defaults (TLS 1.2 or newer)."""
    for path in (cert, key):
        if not os.path.isfile(path):
            raise InvalidInput(f"cannot read {path}: give --tls-cert and --tls-key as PEM files")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise InvalidInput(f"--tls-cert {cert} and --tls-key {key} do not make a certificate "
                           f"chain ({e.reason or e}): give the PEM certificate (with its chain) "
                           "and its private key") from None
    return context


_PLAIN_BODY = json.dumps({"error": "This port speaks HTTPS: use https://",
                          "error_type": "PlainHttpToHttps"}).encode()
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"X-Error-Message: This port speaks HTTPS: use https://\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY)
)
TLS_HANDSHAKE = 0x16  # the first byte of every TLS connection (a handshake record)
FIRST_BYTE_TIMEOUT_S = 30.0


class _Listener:
    """What aiohttp's runner needs of a site's server: its sockets, and close()."""

    def __init__(self, sock: socket.socket, task: asyncio.Task):
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        for s in self.sockets:
            s.close()


class TLSSite(web.BaseSite):
    """A TCP site that speaks TLS, and answers a plain-HTTP request on its port with one 400
    saying to use https:// (as nginx does) instead of a connection that just drops."""

    __slots__ = ("_host", "_port", "_bound_port", "_connections")

    def __init__(self, runner, host: str, port: int, ssl_context: ssl.SSLContext,
                 backlog: int = 1024):
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._bound_port = host, port, port
        self._connections: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._bound_port}"

    async def start(self) -> None:
        await super().start()
        sock = socket.create_server((self._host, self._port), backlog=self._backlog,
                                    family=socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setblocking(False)
        self._bound_port = sock.getsockname()[1]
        self._server = _Listener(sock, asyncio.create_task(self._accept(sock)))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(sock)
            except OSError:  # closed, or out of descriptors: stop rather than spin
                return
            task = asyncio.create_task(self._route(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _route(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            first = await asyncio.wait_for(_peek(loop, conn), FIRST_BYTE_TIMEOUT_S)
            if first and first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(self._runner.server, conn,
                                                   ssl=self._ssl_context)
                return
            if first:
                await loop.sock_sendall(conn, PLAIN_HTTP_ANSWER)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass  # a failed handshake or a silent client: nothing to answer
        conn.close()


async def _peek(loop, conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for whoever reads it next."""
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(conn.fileno())
