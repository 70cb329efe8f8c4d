"""Answers that current Hub clients ask for and a mirror has nothing to say to, and the
redirects of former repo ids (registry/names.py), in the Hub's own form.

* ``GET /api/agent-harnesses``: the ``hf`` CLI (huggingface_hub >= 1.33) fetches this registry of
  AI-agent harnesses at start-up (``huggingface_hub/utils/_detect_agent.py``) and treats an error
  as "none"; the valid empty answer avoids an error logged per command.
* A former name answers as the Hub answers a renamed repo: a relative 307 to the same path under
  the current id, query string kept. huggingface_hub follows relative redirects on its metadata
  HEAD and any redirect on GET, and stores the files under the id it was asked for.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..download_counts import FLUSH_INTERVAL_S, DownloadCounter
from ..names import canonical_name
from .app import DEPOT

COUNTER = web.AppKey("download_counter", DownloadCounter)
EMPTY_AGENT_HARNESSES = {"standardEnvVars": [], "harnesses": {}}
log = logging.getLogger(__name__)


async def agent_harnesses(_request: web.Request) -> web.Response:
    return web.json_response(EMPTY_AGENT_HARNESSES)


def _find_current(depot, repo_type: str, names: list[str]) -> tuple[str, str] | None:
    with depot.db.session() as s:
        for name in names:
            current = canonical_name(s, repo_type, name)
            if current is not None:
                return name, current
    return None


async def former_name_redirect(request: web.Request, repo_type: str, prefix: str,
                               names: list[str]) -> web.Response | None:
    """A 307 to the current id when one of the readings ``names`` of the raw path after
    ``prefix`` is a former name; None otherwise."""
    found = await asyncio.to_thread(_find_current, request.app[DEPOT], repo_type, names)
    if found is None:
        return None
    old, current = found
    path, sep, query = request.raw_path.partition("?")
    segments = path[len(prefix):].split("/")
    n = old.count("/") + 1
    location = (prefix + current + "".join("/" + seg for seg in segments[n:])
                + (sep + query if query else ""))
    return web.Response(status=307, headers={"Location": location},
                        text=f"Redirecting to {location}")


def count_download(request: web.Request, repo_type: str, revision_id: int, path: str) -> None:
    counter = request.app.get(COUNTER)
    if counter is not None:
        counter.hit(repo_type, revision_id, path)


async def _flush_periodically(counter: DownloadCounter):
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await asyncio.to_thread(counter.flush)
            except Exception:  # a busy database: the counts stay pending for the next round
                log.warning("could not record served download counts; will retry", exc_info=True)
    except asyncio.CancelledError:
        pass


async def _counting(app: web.Application):
    counter = app.get(COUNTER)
    if counter is None:
        yield
        return
    task = asyncio.ensure_future(_flush_periodically(counter))
    yield
    task.cancel()
    await task
    await asyncio.to_thread(counter.flush)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/agent-harnesses", agent_harnesses)
    app[COUNTER] = DownloadCounter(app[DEPOT])
    app.cleanup_ctx.append(_counting)
