"""Pieces for scale-out tests: replicas of ``serve``, nginx in front of them, and a fault-injecting
TCP proxy in front of the object store.

    with FaultProxy("127.0.0.1", moto_port) as proxy:   # AWS_ENDPOINT_URL=proxy.url
        proxy.cut_uploads_after = 1024                  # requests sending more are cut there
        proxy.cut_downloads_after = 1024                # responses longer are cut there
    with nginx_balancer([port1, port2], tmp) as url: ...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from serverutil import ROOT, free_port, stop_process, wait_http

NGINX = "/usr/sbin/nginx"


class FaultProxy:
    """A TCP proxy on a free loopback port. With ``cut_uploads_after`` (bytes) set, any
    connection that sends more than that is closed there (an upload dying midway); with
    ``cut_downloads_after`` set, any response stream longer than that is cut (a download dying
    midway). ``None`` (the default) passes everything."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.cut_uploads_after: int | None = None
        self.cut_downloads_after: int | None = None
        self.cuts = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            # Bytes sent each way since the other side last spoke: per request on a kept-alive
            # HTTP/1.1 connection (requests and responses alternate).
            counts = {"up": 0, "down": 0}
            threading.Thread(target=self._pump, args=(client, upstream, "up", counts), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down", counts), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, counts: dict) -> None:
        other = "down" if direction == "up" else "up"
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                counts[other] = 0
                sent = counts[direction]
                limit = self.cut_uploads_after if direction == "up" else self.cut_downloads_after
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: max(limit - sent, 0)])
                    self.cuts += 1
                    break
                dst.sendall(data)
                counts[direction] = sent + len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Replica:
    """One ``modeldepot serve`` process with its own home."""

    def __init__(self, home: Path, env: dict, extra_args: Sequence[str] = ()):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home.parent / f"{self.home.name}-serve.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--home", str(self.home), "serve", "--port",
             str(self.port), *extra_args],
            cwd=ROOT, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self) -> "Replica":
        try:
            wait_http(self.url + "/health", timeout=120, proc=self.proc)
        except Exception as e:
            raise RuntimeError(f"{e}\n--- log ---\n{self.log_path.read_text()}") from None
        return self

    def has_active_connection(self) -> bool:
        """Whether a client (nginx) is connected to this replica right now."""
        import psutil

        return any(c.laddr and c.laddr.port == self.port and c.status == "ESTABLISHED"
                   for c in psutil.Process(self.proc.pid).net_connections("tcp"))

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream depot {{
{servers}
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://depot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_next_upstream error timeout http_502 http_503;
            {limit}
        }}
    }}
}}
"""


@contextmanager
def nginx_balancer(ports: Sequence[int], prefix: Path, limit_rate: str | None = None,
                   workers: int = 1, keepalive: int = 0) -> Iterator[str]:
    """nginx on a free loopback port, round-robin over ``ports``, with its own prefix/config.
    ``keepalive``: idle connections kept to the replicas (0: one connection per request, so a
    replica with an open connection is one serving a request)."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        prefix=prefix, port=port, workers=workers,
        servers="\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports),
        limit=f"limit_rate {limit_rate};" if limit_rate else "",
        keepalive=f"keepalive {keepalive};" if keepalive else ""))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=30, proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float = 60, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
