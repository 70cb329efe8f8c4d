"""The server's logs: a structured access log, and error logging that a flood cannot drown.

Access log (``serve --access-log PATH|-``): one JSON object a line, e.g.

    {"time": "2026-12-01T18:00:00.123Z", "client": "10.0.0.7", "method": "GET",
     "path": "/api/models?limit=5", "status": 200, "bytes": 1234, "duration_ms": 1.9}

Lines are handed to one writer thread through a bounded queue, so a slow disk never stalls the
event loop and memory stays bounded: when the queue is full, lines are dropped and counted, and
the count is written as ``{"dropped": N}`` once there is room again.

Error log (stderr): the same message (logger, format string, exception type) is written at most
``RATE_LIMIT`` times per ``RATE_WINDOW_S``; the rest are counted and the count is reported with
the next one that passes. Running out of descriptors made the accept loop log one traceback per
attempt (132 MiB in 30 s).
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from datetime import datetime, timezone

from aiohttp.abc import AbstractAccessLogger

QUEUE_LINES = 10_000
PATH_LIMIT = 2000
RATE_LIMIT = 5
RATE_WINDOW_S = 10.0
_KEYS_LIMIT = 1000


class AccessLogWriter:
    """Writes lines to a file (or stdout) from one background thread."""

    def __init__(self, target: str):
        self.target = target
        self._stream = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        try:
            if self.dropped:
                self._queue.put_nowait(json.dumps({"dropped": self.dropped}))
                self.dropped = 0
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                break
            try:
                self._stream.write(line + "\n")
                if self._queue.empty():
                    self._stream.flush()
            except (OSError, ValueError):
                self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self._stream is not sys.stdout:
            self._stream.close()
        else:
            self._stream.flush()


def access_log_class(writer: AccessLogWriter) -> type[AbstractAccessLogger]:
    """An aiohttp access logger class bound to ``writer`` (aiohttp instantiates it itself)."""

    class JsonAccessLogger(AbstractAccessLogger):
        def log(self, request, response, time_s: float) -> None:
            sent = getattr(response, "sent_bytes", None)  # sendfile bypasses body_length
            if sent is None:
                sent = 0 if request.method == "HEAD" else (
                    response.content_length if response.content_length is not None
                    else response.body_length)
            writer.put(json.dumps({
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                        .replace("+00:00", "Z"),
                "client": request.remote,
                "method": request.method,
                "path": request.raw_path[:PATH_LIMIT],
                "status": response.status,
                "bytes": sent,
                "duration_ms": round(time_s * 1000, 3),
            }))

    return JsonAccessLogger


class RateLimit(logging.Filter):
    """At most ``limit`` records of one message per ``window`` seconds; the rest are counted."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW_S):
        super().__init__()
        self.limit, self.window = limit, window
        self._seen: dict[tuple, list] = {}  # key -> [window start, count, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.levelno, str(record.msg)[:200], exc_type)
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.window:
                suppressed = state[2] if state else 0
                if len(self._seen) >= _KEYS_LIMIT:
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if suppressed:  # no "%" in the note: safe with and without args
                    record.msg = (f"{record.msg} ({suppressed} more like this were "
                                  f"suppressed in {self.window:g} s)")
                return True
            state[1] += 1
            if state[1] <= self.limit:
                return True
            state[2] += 1
            return False


def configure_error_log() -> logging.Handler:
    """stderr, warnings and up, rate-limited: for the ``serve`` process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    return handler
