"""The real ``modeldepot serve`` under slow and hostile clients (issue 11, items 7 and 11):
timeouts, connection limits, 503 (never 404) when descriptors run out, the open-file limit,
bounded error logging, and the access log.

Loopback has a whole /8: clients bind to 127.0.0.2, 127.0.1.7, ... to be distinct addresses.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
import urllib.error
import urllib.request

import pytest

from serverutil import running_server, server_log

BIG = 32 << 20
NOPE = {"error": "model repo 'org/nope' is not in the depot; see 'modeldepot list'",
        "error_type": "RepoNotFound"}
GET_BIG = b"GET /org/big/resolve/main/big.bin HTTP/1.1\r\nHost: depot\r\n\r\n"


@pytest.fixture(scope="module")
def big_home(tmp_path_factory):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    root = tmp_path_factory.mktemp("limits")
    src = root / "big"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert"}')
    with open(src / "big.bin", "wb") as f:
        f.write(os.urandom(1 << 20) * (BIG >> 20))
    import_dir(Depot(Settings.from_env(home=root / "home")), src, "org/big")
    return root / "home"


def nofile(soft: int, hard: int | None = None):
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard or soft))
    return lower


def connect(url: str, source: str, rcvbuf: int | None = None) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def status_of(url: str, path: str, source: str = "127.0.0.1") -> int:
    """The status of GET ``path`` from ``source``, reading the whole body."""
    import http.client

    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def first_line(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    return s.recv(64).split(b"\r\n", 1)[0]


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (draining what it sent)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not s.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_slow_readers_are_cut_and_health_keeps_answering(big_home):
    """200 readers that never read, from one address, under a 256 open-file limit."""
    args = ["--no-inference", "--write-timeout", "3", "--max-connections-per-client", "50"]
    with running_server(big_home, args, preexec_fn=nofile(256)) as url:
        slow = []
        for _ in range(200):
            s = connect(url, "127.0.0.2", rcvbuf=4096)
            s.sendall(GET_BIG)
            slow.append(s)
        try:
            lines = [first_line(s) for s in slow]
            assert lines.count(b"HTTP/1.1 200 OK") == 50
            assert lines.count(b"HTTP/1.1 503 Service Unavailable") == 150
            health = [status_of(url, "/health") for _ in range(10)]
            files = [status_of(url, "/org/big/resolve/main/config.json", "127.0.0.3")
                     for _ in range(10)]
            assert status_of(url, "/org/big/resolve/main/big.bin") == 200
            assert health == [200] * 10 and files == [200] * 10
            # the stalled 50 are cut after the write timeout (3 s, swept every 0.5 s), freeing
            # their descriptors; reading before then would let them go on
            time.sleep(5)
            assert all(closed_within(s, 5) for s in slow)
        finally:
            for s in slow:
                s.close()
        assert status_of(url, "/org/big/resolve/main/big.bin", "127.0.0.2") == 200


def test_descriptor_pressure_is_503_never_404(big_home):
    """More slow readers than descriptors, each from its own address: every request is
    answered, an existing file is never 404, and the error log stays small."""
    args = ["--no-inference", "--write-timeout", "3"]
    with running_server(big_home, args, preexec_fn=nofile(128)) as url:
        slow = []
        try:
            for i in range(200):
                s = connect(url, f"127.0.{2 + i // 200}.{1 + i % 200}", rcvbuf=4096)
                s.sendall(GET_BIG)
                slow.append(s)
            statuses = [status_of(url, "/org/big/resolve/main/config.json", f"127.0.9.{i + 1}")
                        for i in range(20)]
            health = [status_of(url, "/health") for _ in range(5)]
            lines = {first_line(s) for s in slow}
        finally:
            for s in slow:
                s.close()
        assert set(statuses) <= {200, 503} and set(health) <= {200, 503}, (statuses, health)
        assert lines <= {b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"}, lines
        assert b"HTTP/1.1 503 Service Unavailable" in lines
        deadline = time.monotonic() + 15
        while status_of(url, "/health") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status_of(url, "/org/big/resolve/main/config.json") == 200
        log = server_log(big_home, url)
        assert log.count("Traceback") <= 10, log[-3000:]
        assert "at most 32 connections" in log


def test_slowloris_body_stall_and_idle_connections_are_closed(big_home):
    args = ["--no-inference", "--header-timeout", "1", "--body-timeout", "1",
            "--idle-timeout", "1"]
    with running_server(big_home, args) as url:
        started = time.monotonic()
        loris = [connect(url, "127.0.0.4") for _ in range(100)]
        for s in loris:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: depot\r\nX-a: ")
        for _ in range(3):  # one more byte now and then: slowloris
            time.sleep(0.2)
            for s in loris:
                s.sendall(b"a")
        assert status_of(url, "/health") == 200
        assert all(closed_within(s, 5) for s in loris)
        assert time.monotonic() - started < 8
        body = connect(url, "127.0.0.5")
        body.sendall(b"POST /api/models/org/big/paths-info/main HTTP/1.1\r\nHost: depot\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\npaths=conf")
        assert closed_within(body, 5)
        idle = connect(url, "127.0.0.6")
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: depot\r\n\r\n")
        assert first_line(idle) == b"HTTP/1.1 200 OK"
        assert closed_within(idle, 5)
        for s in loris + [body, idle]:
            s.close()


@pytest.mark.parametrize("request_bytes", [
    b"G\x01T / HTTP/1.1\r\nHost: depot\r\n\r\n",                  # not a method token
    b"GET / HTTP/9\r\nHost: depot\r\n\r\n",                        # not a version
    b"GET / HTTP/1.1\r\nHost: depot\r\nX: " + b"a" * 20000 + b"\r\n\r\n",  # header too long
    b"GET / HTTP/1.1\r\nHost: depot\r\nBad Header: x\r\n\r\n",      # space in a name
    b"POST /api/models HTTP/1.1\r\nHost: depot\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_requests_the_parser_refuses_get_a_json_400(big_home, request_bytes):
    with running_server(big_home, ["--no-inference"]) as url:
        s = connect(url, "127.0.0.1")
        s.sendall(request_bytes)
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        s.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.0 400 Bad Request")
        assert b"Content-Type: application/json" in head
        error = json.loads(body)
        assert error["error_type"] == "BadRequest"
        assert error["error"].startswith("malformed request: ")
        assert b"\x01" not in body and b"aaaa" not in body  # the request is not echoed
        assert status_of(url, "/health") == 200


def test_soft_open_file_limit_is_raised_at_start(big_home):
    with running_server(big_home, ["--no-inference"], preexec_fn=nofile(256, 4096)) as url:
        assert status_of(url, "/health") == 200
        log = server_log(big_home, url)
    assert "(open-file limit 4096, at most 2016 connections)" in log


def test_access_log_writes_one_json_line_per_request(big_home, tmp_path):
    path = tmp_path / "access.log"
    with running_server(big_home, ["--no-inference", "--access-log", str(path)]) as url:
        assert status_of(url, "/org/big/resolve/main/config.json", "127.0.0.7") == 200
        assert status_of(url, "/api/models/org/nope", "127.0.0.7") == 404
        assert status_of(url, "/org/big/resolve/main/big.bin", "127.0.0.7") == 200
        deadline = time.monotonic() + 10
        records = []
        while len(records) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            records = [json.loads(line) for line in path.read_text().splitlines()
                       if '"127.0.0.7"' in line]
    assert [(r["method"], r["path"], r["status"], r["bytes"], r["client"]) for r in records] == [
        ("GET", "/org/big/resolve/main/config.json", 200, 22, "127.0.0.7"),
        ("GET", "/api/models/org/nope", 404, len(json.dumps(NOPE)), "127.0.0.7"),
        ("GET", "/org/big/resolve/main/big.bin", 200, BIG, "127.0.0.7"),
    ]
    assert all(set(r) == {"time", "client", "method", "path", "status", "bytes", "duration_ms"}
               and r["duration_ms"] >= 0 and r["time"].endswith("Z") for r in records)


def test_access_log_to_stdout(big_home):
    with running_server(big_home, ["--no-inference", "--access-log", "-"]) as url:
        assert status_of(url, "/health", "127.0.0.8") == 200
        deadline = time.monotonic() + 10
        while '"client": "127.0.0.8"' not in server_log(big_home, url):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        line = next(x for x in server_log(big_home, url).splitlines() if "127.0.0.8" in x)
    assert json.loads(line)["path"] == "/health"


def test_error_log_is_rate_limited(caplog):
    from registry.server.logs import RateLimit

    logger = logging.getLogger("modeldepot.test.flood")
    limit = RateLimit(limit=3, window=0.5)
    logger.addFilter(limit)
    try:
        with caplog.at_level(logging.ERROR, logger="modeldepot.test.flood"):
            for i in range(1000):
                logger.error("socket.accept() out of system resource %d", i)
            logger.error("another message")
            time.sleep(0.6)
            logger.error("socket.accept() out of system resource %d", 1000)
    finally:
        logger.removeFilter(limit)
    assert [r.getMessage() for r in caplog.records] == [
        "socket.accept() out of system resource 0",
        "socket.accept() out of system resource 1",
        "socket.accept() out of system resource 2",
        "another message",
        "socket.accept() out of system resource 1000 (997 more like this were suppressed in "
        "0.5 s)",
    ]
