"""Sending one blob: conditionals by the content-addressed ETag, byte ranges, kernel sendfile.

aiohttp's ``FileResponse`` evaluates ``If-Match``, ``If-None-Match`` and ``If-Range`` against its
own mtime/size ETag (never the one we send) and is loose about ``Range``. Here every conditional
is driven by the ETag the client was given (RFC 9110 §13.2.2 order: If-Match, If-None-Match,
Range with If-Range), and the bytes still go out through ``loop.sendfile`` (zero copy) in pieces,
each bounded by the write timeout, so a reader that stops reading frees its two descriptors.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from aiohttp import web

CONTENT_TYPE = "application/octet-stream"
# Pieces start small and at most double, towards PIECE_SECONDS of the rate seen so far: large for
# a fast reader (few calls, full speed), small for a slow one, so "a piece did not finish within
# the write timeout" means the reader stopped (or slowed a hundredfold), not that it is slow.
PIECE_MIN = 64 << 10
PIECE_MAX = 64 << 20
PIECE_SECONDS = 0.5
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*", re.IGNORECASE)
_MAX_DIGITS = 19


class Unsatisfiable(Exception):
    pass


def _etags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _strong_match(header: str, etag: str) -> bool:
    """If-Match / If-Range: a weak validator never matches."""
    return any(t == "*" or t.strip('"') == etag for t in _etags(header) if not t.startswith("W/"))


def _weak_match(header: str, etag: str) -> bool:
    """If-None-Match."""
    return any(t == "*" or t.removeprefix("W/").strip('"') == etag for t in _etags(header))


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10 ** _MAX_DIGITS


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` (inclusive) of a single ``bytes=`` range, ``None`` to ignore the header
    (another unit, several ranges, bad syntax: all allowed by RFC 9110 §14.2), or raise
    :class:`Unsatisfiable` (``bytes=-0``, a start past the end, any range of an empty file)."""
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        n = _number(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = _number(first)
    end = _number(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


class BlobResponse(web.StreamResponse):
    """One blob of the depot, answered under its content-addressed ETag.

    The handler calls :meth:`open` (so running out of descriptors is answered by the error
    middleware as a 503, never as a 404); :meth:`prepare` picks the status and sends.
    """

    def __init__(self, path: Path, content_etag: str, size: int, *, headers: dict,
                 write_timeout: float | None = None):
        super().__init__(headers=headers)
        self._path = path
        self._content_etag = content_etag
        self._size = size
        self._write_timeout = write_timeout
        self._file = None
        self.sent_bytes = 0

    async def open(self) -> "BlobResponse":
        self._file = await asyncio.to_thread(open, self._path, "rb")
        return self

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def status_for(self, request: web.BaseRequest) -> int:
        """The status :meth:`prepare` will send (for metrics, read before it runs)."""
        return self._decide(request)[0]

    def _decide(self, request: web.BaseRequest) -> tuple[int, int, int]:
        """(status, offset, count) for this request's conditionals and range."""
        etag, size, h = self._content_etag, self._size, request.headers
        if (im := h.get("If-Match")) is not None and not _strong_match(im, etag):
            return 412, 0, 0
        if (inm := h.get("If-None-Match")) is not None and _weak_match(inm, etag):
            return 304, 0, 0
        rng = h.get("Range")
        if rng is None or request.method not in ("GET", "HEAD"):
            return 200, 0, size
        if (ir := h.get("If-Range")) is not None and not _strong_match(ir, etag):
            return 200, 0, size  # a stale (or date) validator: the whole, current file
        try:
            span = byte_range(rng, size)
        except Unsatisfiable:
            return 416, 0, 0
        if span is None:
            return 200, 0, size
        return 206, span[0], span[1] - span[0] + 1

    async def prepare(self, request: web.BaseRequest):
        if self.prepared:
            return await super().prepare(request)
        try:
            return await self._prepare(request)
        finally:
            self._close()

    async def _prepare(self, request: web.BaseRequest):
        status, offset, count = self._decide(request)
        self.set_status(status)
        self.etag = self._content_etag
        headers = self.headers
        if status == 416:
            headers["Content-Range"] = f"bytes */{self._size}"
            body = json.dumps({"error": f"range {request.headers['Range'][:100]!r} is not "
                               f"satisfiable: the file has {self._size} bytes",
                               "error_type": "RangeNotSatisfiable"}).encode()
            headers["Content-Type"] = "application/json"
            self.content_length = len(body)
            writer = await super().prepare(request)
            if request.method != "HEAD":
                await self.write(body)
            return writer
        if status in (304, 412):
            self.content_length = 0 if status == 412 else None
            return await super().prepare(request)
        headers.setdefault("Content-Type", CONTENT_TYPE)
        self.content_length = count
        if status == 206:
            headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{self._size}"
        writer = await super().prepare(request)
        if request.method == "HEAD" or count == 0:
            return writer
        if self._file is None:
            await self.open()
        await self._send(request, offset, count)
        await super().write_eof()
        return writer

    async def _send(self, request: web.BaseRequest, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        piece = PIECE_MIN
        end = offset + count
        while offset < end:
            n = min(piece, end - offset)
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._write_timeout):
                    await loop.sendfile(transport, self._file, offset, n)
            except BaseException as e:
                # asyncio leaves the file position just past what the kernel took: count the
                # part of this piece that went out (the access audit records cut-off downloads)
                try:
                    self.sent_bytes += max(0, min(self._file.tell(), end) - offset)
                except (OSError, ValueError):
                    pass
                if isinstance(e, TimeoutError):
                    transport.abort()
                    raise ConnectionResetError(
                        f"write timeout: the client read nothing for {self._write_timeout:g} s"
                    ) from None
                raise
            offset += n
            self.sent_bytes += n
            rate = n / max(time.monotonic() - started, 1e-6)
            piece = int(min(PIECE_MAX, 2 * piece, max(PIECE_MIN, rate * PIECE_SECONDS)))
