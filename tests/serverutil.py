"""Start the real ``modeldepot serve`` in a subprocess on a free loopback port, for tests.

    with running_server(home) as url:          # url == "http://127.0.0.1:PORT"
        requests.get(url + "/api/models")

The server runs as ``python -m cli --home HOME serve --port PORT`` from the checkout, with the
test process's environment (so the socket guard on PYTHONPATH applies to it too).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port that was free a moment ago (the OS may hand it out again; good enough in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last})")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def kill_when_reached(script: str, marker: Path, timeout: float = 240.0) -> None:
    """Run ``python -c script marker`` from the repo root and SIGKILL it as soon as it has
    created ``marker`` (the point the test wants to interrupt); fails, with its output, if it
    ends or runs past ``timeout`` first."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(marker)], cwd=ROOT,
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stdout.read().decode() if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@contextmanager
def running_server(
    home: Path,
    extra_args: Sequence[str] = (),
    env: dict | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    preexec_fn=None,
) -> Iterator[str]:
    """Run ``modeldepot --home HOME serve --port PORT *extra_args``; yield its base URL.

    ``env`` entries are added to (and override) the current environment; a value of ``None``
    removes the variable. The server's stderr is kept in ``HOME/../serve-PORT.log`` so a failing
    test can show it. ``preexec_fn`` runs in the child before the server (e.g. to lower its
    open-file limit).
    """
    port = port or free_port()
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--home", str(home), "serve", "--port", str(port),
             *map(str, extra_args)],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(url + "/health", timeout=timeout, proc=proc)
            except Exception as e:
                stop_process(proc)
                raise RuntimeError(f"{e}\n--- server log ---\n{log_path.read_text()}") from None
            yield url
        finally:
            stop_process(proc)


def server_log(home: Path, url: str) -> str:
    """The output of the server started by ``running_server(home)`` at ``url``."""
    port = url.rsplit(":", 1)[1]
    path = Path(home).parent / f"serve-{port}.log"
    return path.read_text() if path.exists() else ""


class AppServer:
    """An aiohttp app served from a background thread on a loopback port, for in-process tests.

    ``stop_listening()`` / ``listen()`` close and reopen the listening socket on the same port
    (an upstream that dies and comes back); ``close()`` shuts everything down.
    """

    def __init__(self, app, port: int | None = None):
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = None
        self._site = None
        self._call(self._setup())
        self.listen()

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _setup(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()

    async def _listen(self) -> None:
        from aiohttp import web

        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def listen(self) -> None:
        self._call(self._listen())

    def stop_listening(self) -> None:
        """Refuse new connections from now on (safe to call from a request handler's loop)."""
        if threading.get_ident() == self._thread.ident:
            asyncio.ensure_future(self._stop_listening(), loop=self.loop)
        else:
            self._call(self._stop_listening())

    def close(self) -> None:
        try:
            self._call(self._runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "AppServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
