"""A socket guard: refuse (and record) any connection that leaves the loopback interface.

Tests install it in-process (``install()``) and in subprocesses (``tests/guard/sitecustomize.py``
calls ``install()`` when ``MODELDEPOT_SOCKET_GUARD`` is set). It is how the offline guarantee is
proven: an attempt is refused *and* written to ``MODELDEPOT_SOCKET_GUARD_LOG``, so code that
swallows the error still fails the test that reads the log.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_installed = False
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NonLoopbackConnection(OSError):
    pass


def is_loopback(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    log = os.environ.get("MODELDEPOT_SOCKET_GUARD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {what}\n")


def _check_address(family, address) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        if not is_loopback(address[0]):
            _record(f"connect {address[0]}:{address[1]}")
            raise NonLoopbackConnection(f"socket guard: connection to {address[0]} refused")


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        _check_address(self.family, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check_address(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            _record(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"socket guard: lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
