"""`serve --proxy`: the Hub API as a pull-through cache in front of an upstream Hub.

One middleware in front of the Hub API routes (``hub_api``). Before the registry answers, it
makes sure the registry knows what the request names:

- a revision the depot lacks, or a branch/tag not re-resolved for ``ttl`` seconds, is asked of
  the upstream (one call however many clients ask at once) and recorded as a partial revision;
  registry aliases and known commits never go upstream; when the upstream fails, what the depot
  already holds is served (stale-if-error);
- a file a partial revision lacks is fetched once (``FileFetch``), verified exactly as ``pull``
  verifies, while every client that asks meanwhile is streamed the bytes as they land in the
  partial file. The last byte goes out only once the whole file verified: a file whose hash turns
  out wrong has its clients' connections cut short of the promised Content-Length, so their own
  size check fails instead of keeping a wrong file;
- search merges the upstream's answer with what exists only locally.

Then ``hub_api`` answers from the registry as it always does: the answers clients see are built
from what was recorded, so nothing the upstream adds (Xet hashes, redirects to other hosts)
reaches them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from aiohttp import web
from sqlalchemy import select

from .. import proxy as lib
from ..depot import Depot
from ..errors import DepotError, OfflineError, RepoNotFound
from ..models import Repo
from ..naming import is_hub_ref
from . import hub_api
from .app import DEPOT, SETTINGS
from .ops import METRICS

PROXY = web.AppKey("proxy", object)
# Readers are woken at most this often while a file arrives (the fetch thread calls back).
NOTIFY_BYTES = 1 << 20
FETCH_WORKERS = 16
SEARCH_TIMEOUT = (5, 30)


class ProxyMetrics:
    def __init__(self, registry):
        from prometheus_client import Counter

        self.hits = Counter("modeldepot_proxy_hits", "Requests answered from the depot without "
                            "the upstream.", ["kind"], registry=registry)
        self.misses = Counter("modeldepot_proxy_misses", "Requests that needed the upstream.",
                              ["kind"], registry=registry)
        self.upstream_bytes = Counter("modeldepot_proxy_upstream_bytes",
                                      "File bytes received from the upstream.", registry=registry)
        self.joins = Counter("modeldepot_proxy_single_flight_joins", "Requests that joined an "
                             "upstream call already under way.", ["kind"], registry=registry)
        self.errors = Counter("modeldepot_proxy_upstream_errors", "Upstream failures by kind.",
                              ["kind"], registry=registry)
        self.stale = Counter("modeldepot_proxy_stale_served", "Answers from the depot's last "
                             "known commit because the upstream failed.", registry=registry)


class SingleFlight:
    """One running call per key; whoever asks meanwhile awaits the same result."""

    def __init__(self, metrics: ProxyMetrics):
        self._running: dict[Any, asyncio.Future] = {}
        self._metrics = metrics

    async def run(self, kind: str, key: Any, start: Callable[[], Awaitable]) -> Any:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        else:
            self._metrics.joins.labels(kind).inc()
        # A client that goes away must not cancel the call the others wait for.
        return await asyncio.shield(task)


class FileFetch:
    """One upstream download of one file, and what its readers need to tail it.

    The fetch thread (``hub._Puller``) reports through ``opened``/``written``; everything else
    runs on the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int):
        self.loop, self.size = loop, size
        self.fd: int | None = None  # the partial file, opened when the download locked it
        self.generation = 0  # bumped when the download starts over from byte 0
        self.have = 0  # bytes of the file on disk so far
        self.responded = False  # the upstream answered with bytes (or the file was complete)
        self.state = "running"  # -> "verified" | "failed"
        self.error: DepotError | None = None
        self.record = None
        self._event = asyncio.Event()
        self._last_notified = 0
        self._told = False  # (fetch thread) the readers heard of the first bytes
        self.cancelled = False

    # -- called from the fetch thread --

    def opened(self, tmp, have: int) -> None:
        fd = os.open(tmp, os.O_RDONLY)
        self._last_notified = have
        self.loop.call_soon_threadsafe(self._opened, fd, have)

    def due(self, n: int) -> bool:
        """Flush and tell the readers? The first bytes, then every NOTIFY_BYTES, and the end."""
        if self.cancelled:  # the server is stopping: end the download (its partial file stays)
            raise ConnectionAbortedError("the proxy is shutting down")
        return n - self._last_notified >= NOTIFY_BYTES or n >= self.size or not self._told

    def written(self, n: int) -> None:
        self._told = True
        self._last_notified = n
        self.loop.call_soon_threadsafe(self._progress, n)

    # -- on the loop --

    def _wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def _opened(self, fd: int, have: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.have = fd, have
        self.generation += 1
        self._wake()

    def _progress(self, n: int) -> None:
        self.have, self.responded = n, True
        self._wake()

    def finish(self, record=None, error: DepotError | None = None) -> None:
        self.state = "verified" if error is None else "failed"
        self.record, self.error = record, error
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._wake()

    async def changed(self) -> None:
        await self._event.wait()


class Streamed(web.StreamResponse):
    """A file streamed while it arrives; it counts what went out, for the access audit (which
    records it once the handler returns, the last byte sent or the connection cut)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent_bytes = 0
        self.outcome = "ok"


class Proxy:
    def __init__(self, app: web.Application, cfg: lib.ProxyConfig):
        self.cfg = cfg
        self.depot: Depot = app[DEPOT]
        self.offline = app[SETTINGS].offline
        self.metrics = ProxyMetrics(app[METRICS].registry)
        self.flights = SingleFlight(self.metrics)
        self.fetches: dict[Any, FileFetch] = {}
        self._tasks: set[asyncio.Task] = set()
        self.checked: dict[tuple, float] = {}  # (type, repo, ref) -> when last resolved upstream
        self.special: dict[tuple, str] = {}  # (type, repo, "refs/pr/N") -> commit
        self.refs: dict[tuple, tuple[float, dict]] = {}  # the upstream's /refs, when fetched
        self.pool = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="proxy")

    async def _thread(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: fn(*args, **kwargs))

    def _failed(self, e: DepotError) -> None:
        self.metrics.errors.labels(e.error_type).inc()

    # -- revisions ---------------------------------------------------------------------------

    async def ensure(self, repo_type: str, name: str, rev: str | None) -> tuple[str, lib.LocalRev | None]:
        """Make sure the registry holds ``rev`` of ``name`` (asking the upstream when it must).
        Returns the repo id to answer under (a renamed repo's new id) and, when it did not have
        to ask, how ``rev`` resolved locally."""
        hub_api._check_rev(rev)
        local = await self._local(repo_type, name, rev)
        if local is None:
            # A former name is never a repo of its own, so a hit needs no names lookup: only a
            # miss asks whether ``name`` is a renamed repo's old id.
            current = await asyncio.to_thread(lib.canonical_name, self.depot, repo_type, name)
            if current != name:
                name = current
                local = await self._local(repo_type, name, rev)
        key = (repo_type, name, rev or "main")
        fresh = time.monotonic() - self.checked.get(key, float("-inf")) < self.cfg.ttl
        if local is not None and (local.kind in ("commit", "alias") or fresh):
            self.metrics.hits.labels("metadata").inc()
            return name, local
        if not self.cfg.allows(repo_type, name):
            if local is not None:
                return name, local
            raise RepoNotFound(f"{lib.label(repo_type, name)} is not in the depot, and this proxy "
                               "does not fetch it from its upstream (not in its allow list)")
        self.metrics.misses.labels("metadata").inc()
        try:
            if self.offline:
                raise OfflineError(f"{lib.label(repo_type, name)}@{rev or 'main'} is not in the "
                                   "depot, and the depot is offline (MODELDEPOT_OFFLINE)")
            canonical, commit = await self.flights.run(
                "metadata", ("meta",) + key,
                lambda: self._thread(lib.record_revision, self.depot, self.cfg, repo_type, name, rev))
        except DepotError as e:
            self._failed(e)
            if local is not None:  # stale-if-error: the last known commit, until the next TTL
                self.metrics.stale.inc()
                self.checked[key] = time.monotonic()
                return name, local
            raise
        self.checked[key] = time.monotonic()
        if canonical != name:
            self.checked[(repo_type, canonical, rev or "main")] = self.checked[key]
        if is_hub_ref(rev):
            self.special[(repo_type, name, rev)] = self.special[(repo_type, canonical, rev)] = commit
            return canonical, await asyncio.to_thread(lib.local_revision, self.depot, repo_type,
                                                      canonical, commit)
        return canonical, None

    async def _local(self, repo_type: str, name: str, rev: str | None) -> lib.LocalRev | None:
        if not is_hub_ref(rev):
            return await asyncio.to_thread(lib.local_revision, self.depot, repo_type, name, rev)
        # refs/pr/N and refs/convert/X are no ref names of the registry: the commit the upstream
        # gave for one is kept here, re-resolved after the TTL like a branch.
        commit = self.special.get((repo_type, name, rev))
        if commit is None:
            return None
        local = await asyncio.to_thread(lib.local_revision, self.depot, repo_type, name, commit)
        return None if local is None else lib.LocalRev("pull-request", local.commit, local.partial)

    # -- files -------------------------------------------------------------------------------

    def _start_fetch(self, repo_type: str, name: str, commit: str, entry: dict) -> FileFetch:
        # By file of a revision, not by content: the fetch registers the file in that revision.
        key = (repo_type, name, commit, entry["path"])
        fetch = self.fetches.get(key)
        if fetch is not None:
            self.metrics.joins.labels("file").inc()
            return fetch
        self.metrics.misses.labels("file").inc()
        fetch = FileFetch(asyncio.get_running_loop(), entry["size"])
        self.fetches[key] = fetch

        async def run() -> None:
            try:
                record = await self._thread(
                    lib.fetch_into_revision, self.depot, self.cfg, repo_type, name, commit, entry,
                    listener=fetch, progress=self.metrics.upstream_bytes.inc)
            except DepotError as e:
                self._failed(e)
                fetch.finish(error=e)
                outcome = e.error_type
            except Exception as e:  # noqa: BLE001 - readers must hear of any failure
                fetch.finish(error=DepotError(f"fetching {entry['path']} failed: {e}"))
                outcome = type(e).__name__
            else:
                fetch.finish(record=record)
                outcome = "ok"
            finally:
                self.fetches.pop(key, None)
            extra = {"error": str(fetch.error)[:500]} if fetch.error is not None else {}
            try:
                await asyncio.to_thread(lib.record_download, self.depot, repo_type, name, commit,
                                        entry["path"], fetch.have if outcome != "ok"
                                        else entry["size"], outcome, **extra)
            except DepotError:
                pass  # the audit must not turn a served file into an error

        task = asyncio.ensure_future(run())
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def stream(self, request: web.Request, fetch: FileFetch, headers: dict,
                     start: int) -> web.StreamResponse:
        while not fetch.responded and fetch.state == "running":
            await fetch.changed()
        if fetch.state == "failed":  # nothing sent yet: a proper error, not a cut
            return error_response(fetch.error)
        size = fetch.size
        resp = Streamed(status=206 if start else 200, headers=headers)
        resp.content_length = size - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        transport = request.transport
        if fetch.fd is not None:
            src = open(f"/proc/self/fd/{fetch.fd}", "rb")  # our own offset, same inode
        else:  # verified before we could tail it: the blob is in the store
            src = open(self.depot.store.blob_path(fetch.record.sha256), "rb")
        generation, pos = fetch.generation, start
        try:
            while True:
                if fetch.state == "failed" or (fetch.generation != generation and pos > start):
                    transport.close()  # short of Content-Length: the client's check fails
                    resp.outcome = "aborted"
                    return resp
                generation = fetch.generation
                # Everything but the last byte may go out before the whole file verified.
                limit = size if fetch.state == "verified" else min(fetch.have, size - 1)
                if pos < limit:
                    if transport is None or transport.is_closing():
                        resp.outcome = "aborted"
                        return resp
                    await loop.sendfile(transport, src, pos, limit - pos)
                    resp.sent_bytes += limit - pos
                    pos = limit
                    continue
                if pos >= size and fetch.state == "verified":
                    break
                await fetch.changed()
        except (ConnectionError, RuntimeError):
            resp.outcome = "aborted"
            return resp  # the client went away; the fetch goes on for the others
        finally:
            src.close()
        await resp.write_eof()
        return resp

    async def resolve(self, request: web.Request, handler) -> web.StreamResponse:
        repo_type, targets = hub_api.parse_resolve(request.raw_path.lstrip("/"))
        if not targets:
            return await handler(request)
        t = targets[0]
        try:
            name, local = await self.ensure(repo_type, t.repo, t.rev)
            # A repo just learned from the upstream is not in access control's view yet: its
            # gate (or privacy) is enforced here before a byte is fetched for this client.
            await asyncio.to_thread(self._enforce_flags, request, repo_type, name, True)
            if name != t.repo:
                request = _renamed(request, t.repo, name)
            if is_hub_ref(t.rev) and local is not None:
                request = _at_commit(request, local.commit)
            if local is None:  # just recorded
                local = await asyncio.to_thread(lib.local_revision, self.depot, repo_type, name,
                                                t.rev)
            entry = local and local.partial and await asyncio.to_thread(
                lib.listed_file, self.depot, repo_type, name, local.commit, t.path)
        except DepotError as e:
            return error_response(e)
        if not entry:
            if local is not None:
                self.metrics.hits.labels("file").inc()
            return await handler(request)
        etag = entry["sha256"] if entry["lfs"] else entry["git_sha1"]
        headers = {
            "X-Repo-Commit": local.commit, "X-Linked-Size": str(entry["size"]),
            "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
            "Access-Control-Expose-Headers": "X-Repo-Commit, X-Linked-Size, X-Linked-Etag, ETag, "
                                             "X-Error-Code, X-Error-Message, Content-Range",
        }
        if entry["lfs"]:
            headers["X-Linked-Etag"] = f'"{etag}"'
        if request.method == "HEAD":  # answered from the listing: no download for a HEAD
            return web.Response(status=200, headers={**headers,
                                                     "Content-Length": str(entry["size"])})
        fetch = self._start_fetch(repo_type, name, local.commit, entry)
        rng = request.headers.get("Range")
        start = _range_start(rng, entry["size"])
        if rng and start is None:
            # A slice (e.g. a safetensors header) is answered from the verified file only: a
            # client keeps a 206 it got in full, so it must never see unverified bytes.
            while fetch.state == "running":
                await fetch.changed()
            if fetch.state == "failed":
                return error_response(fetch.error)
            return await handler(request)
        return await self.stream(request, fetch, headers, start or 0)

    def _enforce_flags(self, request: web.Request, repo_type: str, name: str,
                       files: bool) -> None:
        from .auth_mw import ACCESS, enforce_upstream

        if request.app.get(ACCESS) is None:
            return
        with self.depot.db.session() as s:
            row = s.execute(select(Repo.private, Repo.gated).where(
                Repo.type == repo_type, Repo.name == name)).first()
        if row is not None and (row.private or (files and row.gated)):
            enforce_upstream(request, repo_type, name, private=bool(row.private),
                             gated=row.gated if files else None)

    # -- the API and search ------------------------------------------------------------------

    async def api(self, request: web.Request, handler) -> web.StreamResponse:
        kind = request.match_info["kind"]
        tail = request.raw_path.split("?", 1)[0][len(f"/api/{kind}/"):]
        targets = hub_api.parse_api(tail)
        if targets:
            t = targets[0]
            repo_type = hub_api.TYPES[kind]
            try:
                name, local = await self.ensure(repo_type, t.repo,
                                                None if t.action in ("info", "refs") else t.rev)
                # metadata of a gated repo is public (as on the Hub); a private one is not
                await asyncio.to_thread(self._enforce_flags, request, repo_type, name, False)
            except DepotError as e:
                return error_response(e)
            if name != t.repo:
                request = _renamed(request, t.repo, name)
            if t.action not in ("info", "refs") and is_hub_ref(t.rev) and local is not None:
                request = _at_commit(request, local.commit)
            if t.action == "refs":
                return await self.upstream_refs(request, handler, repo_type, name)
        return await handler(request)

    async def upstream_refs(self, request: web.Request, handler, repo_type: str,
                            name: str) -> web.StreamResponse:
        """The upstream's branches, tags (and pull requests) of ``name``, at most one call per
        TTL, plus what only the registry names (aliases such as ``prod``). A ref pointing at a
        commit the depot lacks is fetched on the first request that names it. When the upstream
        fails, its last answer or else the registry's own refs are served."""
        local = await handler(request)
        if local.status != 200 or self.offline or not self.cfg.allows(repo_type, name):
            return local
        prs = request.query.get("include_prs", "").lower() in ("1", "true")
        key = (repo_type, name)  # one call, with pull requests, answers both kinds of request
        seen = self.refs.get(key)
        if seen is None or time.monotonic() - seen[0] >= self.cfg.ttl:
            self.metrics.misses.labels("metadata").inc()
            try:
                body = await self.flights.run("metadata", ("refs",) + key, lambda: self._thread(
                    lib.upstream_refs, self.cfg, repo_type, name))
                seen = self.refs[key] = (time.monotonic(), body)
            except DepotError as e:
                self._failed(e)
                if seen is None:
                    return local
                self.metrics.stale.inc()
        else:
            self.metrics.hits.labels("metadata").inc()
        merged = {k: list(v) for k, v in seen[1].items() if prs or k != "pullRequests"}
        for group, items in json.loads(local.body).items():
            known = {item.get("name") for item in merged.get(group, [])}
            merged.setdefault(group, []).extend(i for i in items if i.get("name") not in known)
        return web.json_response(merged)

    async def search(self, request: web.Request, handler) -> web.StreamResponse:
        local = await handler(request)
        if local.status != 200 or self.offline:
            return local
        kind = request.match_info["kind"]
        try:
            upstream = await asyncio.to_thread(self._upstream_search, kind, request.query_string)
        except Exception as e:  # noqa: BLE001 - any failure: the local catalog answers
            self._failed(lib.upstream_failure(e, self.cfg, "model", "search"))
            return local
        mine = json.loads(local.body)
        seen = {item.get("id") for item in upstream}
        merged = [strip_xet(item) for item in upstream] + [i for i in mine if i.get("id") not in seen]
        limit = request.query.get("limit")
        if limit and limit.isdigit():
            merged = merged[:int(limit)]
        return web.json_response(merged)

    def _upstream_search(self, kind: str, query: str) -> list:
        body = lib.upstream_json(self.cfg, f"/api/{kind}" + (f"?{query}" if query else ""),
                                 SEARCH_TIMEOUT)
        if not isinstance(body, list):
            raise ValueError("the upstream's search answer is not a list")
        return [item for item in body if isinstance(item, dict)]

    async def close(self, _app) -> None:
        for fetch in self.fetches.values():
            fetch.cancelled = True
        self.pool.shutdown(wait=False, cancel_futures=True)


def strip_xet(value):
    """Plain HTTP only: no Xet hashes, and never ``xetEnabled: true``."""
    if isinstance(value, dict):
        out = {k: strip_xet(v) for k, v in value.items() if not k.lower().startswith("xet")}
        if "xetEnabled" in value:
            out["xetEnabled"] = False
        return out
    if isinstance(value, list):
        return [strip_xet(v) for v in value]
    return value


def error_response(e: DepotError) -> web.Response:
    resp = hub_api.error_response(e)
    if e.details.get("retry_after"):
        resp.headers["Retry-After"] = str(e.details["retry_after"])
    return resp


def _range_start(header: str | None, size: int) -> int | None:
    """0 without a Range; N for ``bytes=N-`` (what resuming clients send), streamed as it
    arrives; None for any other range (answered once the file verified)."""
    if not header:
        return 0
    if header.startswith("bytes=") and "," not in header:
        first, _, last = header[6:].partition("-")
        if first.isdigit() and not last and int(first) < size:
            return int(first)
    return None


_SPECIAL_IN_PATH = re.compile(r"/(resolve|revision|tree|paths-info)/refs(?:/|%2[fF])(pr|convert)"
                              r"(?:/|%2[fF])[^/?]+")


def _at_commit(request: web.Request, commit: str) -> web.Request:
    """The same request with its ``refs/pr/N`` (encoded or not) replaced by ``commit``."""
    raw = _SPECIAL_IN_PATH.sub(lambda m: f"/{m[1]}/{commit}", request.raw_path, count=1)
    return request.clone(rel_url=raw)


def _renamed(request: web.Request, old: str, new: str) -> web.Request:
    """The same request for the repo's new id (the upstream redirected ``old`` to it)."""
    raw = request.raw_path
    for prefix in ("/api/models/", "/api/datasets/", "/datasets/", "/"):
        if raw.startswith(prefix + old):
            return request.clone(rel_url=prefix + new + raw[len(prefix + old):])
    return request


@web.middleware
async def middleware(request: web.Request, handler):
    proxy: Proxy = request.app[PROXY]
    target = request.match_info.handler
    if target is hub_api.resolve_handler and request.method in ("GET", "HEAD"):
        return await proxy.resolve(request, handler)
    if target is hub_api.api_handler:
        return await proxy.api(request, handler)
    if target is hub_api.list_handler:
        return await proxy.search(request, handler)
    return await handler(request)


def setup(app: web.Application, cfg: lib.ProxyConfig) -> None:
    # The upstream client (huggingface_hub's HfApi, requests) is imported now rather than on
    # the first miss: that import was 0.18 s of a cold proxy's first answer.
    import huggingface_hub.hf_api  # noqa: F401
    import huggingface_hub.utils  # noqa: F401

    app[PROXY] = Proxy(app, cfg)
    app.middlewares.append(middleware)
    app.on_cleanup.append(app[PROXY].close)

