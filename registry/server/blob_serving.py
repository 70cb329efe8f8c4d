"""``resolve`` for blobs that live in an object store (registry/store/s3.py).

HEAD is always answered here, from the registry, with the full Hub headers (clients do not follow
an absolute redirect on HEAD, and they need ``X-Repo-Commit``, ``ETag``, ``Content-Length``).
GET is answered by, in this order:

1. sendfile from this host's read-through cache when the blob is cached (no S3 round trip), a
   small file (up to ``CACHE_ON_GET``) being read into the cache first;
2. a 302 to a short-lived presigned URL when ``MODELDEPOT_BLOB_REDIRECT`` is on (the bytes then
   go from the object store straight to the client; S3 honours ``Range`` itself);
3. streaming the object (or the asked ``Range`` of it) through this process.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..errors import DepotError

STREAM_CHUNK = 1024 * 1024
CACHE_ON_GET = 16 * 1024 * 1024  # at most this size, a GET fills the local cache first
log = logging.getLogger(__name__)


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive) for a satisfiable Range, None for none, "bad" when unsatisfiable."""
    if "Range" not in request.headers:
        return None
    try:
        rng = request.http_range
    except ValueError:
        return "bad"
    start, stop = rng.start, rng.stop
    if start is None and stop is None:
        return None
    if start is not None and start < 0:  # bytes=-N: the last N bytes
        start, stop = max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or stop <= start:
        return "bad"
    return start, stop - 1


async def respond(request: web.Request, store, f, etag: str, headers: dict,
                  blob_response) -> web.StreamResponse:
    headers = {**headers, "ETag": f'"{etag}"'}
    cached = store.blob_path(f.sha256)
    if request.method == "HEAD":
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = f.size
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        return resp
    if not cached.exists() and f.size <= CACHE_ON_GET:
        # Small files (configs, tokenizers) are asked for again and again: one S3 round trip
        # fills the cache (verified), and later requests go out by sendfile.
        try:
            await asyncio.to_thread(store.local_blob, f.sha256)
        except DepotError as e:
            from .hub_api import error_response

            return error_response(e)
    if cached.exists():
        store.cache.touch(cached)
        return await blob_response(cached)
    if store.settings.blob_redirect:
        url = await asyncio.to_thread(store.presigned_url, f.sha256)
        return web.Response(status=302, headers={**headers, "Location": url})
    rng = _byte_range(request, f.size)
    if rng == "bad":
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{f.size}"})
    start, end = rng if rng else (0, f.size - 1)
    if f.size == 0:
        return web.Response(status=200, headers=headers, body=b"")
    try:
        body = await asyncio.to_thread(store.open_range, f.sha256, start, end)
    except DepotError as e:
        from .hub_api import error_response

        return error_response(e)
    resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
    resp.content_length = end - start + 1
    resp.content_type = "application/octet-stream"
    if rng:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
    await resp.prepare(request)
    try:
        while True:
            chunk = await asyncio.to_thread(body.read, STREAM_CHUNK)
            if not chunk:
                break
            await resp.write(chunk)
    except Exception as e:  # urllib3 and botocore raise their own kinds for a cut stream
        # Headers are gone: all we can do is cut the connection, so the client sees a short
        # body and resumes with a Range (huggingface_hub does), maybe through another replica.
        log.warning("object store read of %s failed mid-stream: %s", f.sha256[:12], e)
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        body.close()
    await resp.write_eof()
    return resp
