"""The web page's render time on a 100,000-repo registry, against the Hub API answering the
same question.

Two pairs, each timed in alternating rounds over HTTP on loopback against one in-process
server (aiohttp's test server, the same app `modeldepot serve` runs):
  - the repo list with a search (`/ui/?q=...&task=...`, 50 rows) vs `/api/models?search=...`
    with the same filter and limit;
  - a repo page for a revision with 1,000 files vs `/api/models/{id}` (1,000 siblings).
Prints p50/p95 of each and the ratio page/API. Target: every page well under 100 ms.

    .venv/bin/python bench/bench_ui.py [--repos 100000] [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import insert  # noqa: E402

from bench_list import populate  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.models import Blob, File, Ref, Repo, Revision  # noqa: E402

BIG = "big-org/thousand-files"


def add_big_repo(depot: Depot, n_files: int = 1000) -> None:
    now = datetime(2026, 1, 1)
    with depot.db.session(write=True) as s:
        repo = Repo(type="model", name=BIG, author="big-org", pipeline_tag="fill-mask",
                    library_name="transformers", tags=[], private=False, meta={},
                    created_at=now, updated_at=now)
        s.add(repo)
        s.flush()
        commit = "f" * 40
        rev = Revision(repo_id=repo.id, commit=commit, source="import", complete=True,
                       size=n_files * 1000, file_count=n_files, meta={}, created_at=now)
        s.add(rev)
        s.flush()
        s.execute(insert(Blob), [dict(sha256=f"b{i:063x}", size=1000, created_at=now)
                                 for i in range(n_files)])
        s.execute(insert(File), [dict(revision_id=rev.id, path=f"shards/part-{i:04d}.bin",
                                      size=1000, sha256=f"b{i:063x}", git_sha1=f"{i:040x}",
                                      lfs=True, verification="local") for i in range(n_files)])
        s.add(Ref(repo_id=repo.id, name="main", kind="branch", commit=commit, updated_at=now))


def pct(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


async def measure(depot: Depot, settings: Settings, runs: int) -> list[tuple[str, str, list, list]]:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from registry.server.app import ServeOptions, create_app

    app = create_app(settings, ServeOptions(inference=False))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    pairs = [
        ("list, search 'bert' + task", "/ui/?q=bert&task=text-classification",
         "/api/models?search=bert&pipeline_tag=text-classification&limit=50"),
        ("repo page, 1,000 files", f"/ui/models/{BIG}", f"/api/models/{BIG}"),
    ]
    results = []
    async with ClientSession() as client:
        for label, page, api in pairs:
            for url in (page, api):  # warm up, and check both answer
                async with client.get(base + url) as r:
                    assert r.status == 200, (url, r.status, await r.text())
                    await r.read()
            times = {page: [], api: []}
            for _ in range(runs):
                for url in (page, api):
                    t = time.perf_counter()
                    async with client.get(base + url) as r:
                        await r.read()
                    times[url].append(time.perf_counter() - t)
            results.append((label, page, times[page], times[api]))
    await server.close()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repos", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(home=Path(tmp) / "home")
        depot = Depot(settings)
        t0 = time.perf_counter()
        populate(depot, args.repos)
        add_big_repo(depot)
        print(f"populated {args.repos:,} repos (+1 with 1,000 files) in {time.perf_counter() - t0:.1f}s")
        results = asyncio.run(measure(depot, settings, args.runs))
    print(f"{'':28}{'page p50':>10}{'p95':>8}{'API p50':>10}{'p95':>8}{'ratio p50':>11}")
    worst = 0.0
    for label, _, page, api in results:
        p50, p95 = pct(page)
        a50, a95 = pct(api)
        worst = max(worst, p95)
        print(f"{label:28}{p50 * 1e3:8.1f}ms{p95 * 1e3:6.1f}ms{a50 * 1e3:8.1f}ms{a95 * 1e3:6.1f}ms"
              f"{p50 / a50:10.2f}x")
    print(f"target: every page p95 under 100 ms: {'met' if worst < 0.1 else 'NOT met'} "
          f"(worst p95 {worst * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
