"""`GET /api/models?search=TEXT&limit=20` from `modeldepot serve` on a 100,000-repo registry.

Candidate: the HTTP round trip to the real server (a subprocess), over one keep-alive
connection, as ``HfApi.list_models(search=..., limit=20)`` sends it. Baseline: the same filter
as one plain SQLite query through the sqlite3 module, in this process. Prints p50/p95 of both and
their ratio. Target: candidate p50 under 20 ms.

    .venv/bin/python bench/bench_api_search.py [--repos 100000] [--runs 200]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests  # noqa: E402
from bench_list import percentiles, populate  # noqa: E402  (the same synthetic registry)
from serverutil import running_server  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repos", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        depot = Depot(Settings.from_env(home=home))
        t0 = time.perf_counter()
        populate(depot, args.repos)
        print(f"populated {args.repos:,} repos in {time.perf_counter() - t0:.1f}s")
        searches = ["bert", "mini-lm", "sentiment-ner", "nothing-matches", "org17/", "tiny"]
        raw = sqlite3.connect(str(home / "depot.db"))
        sql = ("SELECT name FROM repos WHERE type = 'model' AND name LIKE ? ESCAPE '\\' "
               "ORDER BY name LIMIT 21")
        with running_server(home, ["--no-inference"]) as url:
            session = requests.Session()
            for text in searches:  # warm up: connection, caches, page cache
                session.get(f"{url}/api/models", params={"search": text, "limit": 20}).json()
            base, cand, counts = [], [], {}
            for i in range(args.runs):
                text = searches[i % len(searches)]
                t = time.perf_counter()
                rows = raw.execute(sql, (f"%{text}%",)).fetchall()
                base.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = session.get(f"{url}/api/models", params={"search": text, "limit": 20})
                items = r.json()
                cand.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                assert [m["id"] for m in items] == [row[0] for row in rows[:20]], text
                counts[text] = len(items)
        b50, b95 = percentiles(base)
        c50, c95 = percentiles(cand)
        print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}")
        print(f"{'baseline (sqlite3, 1 query)':34}{b50 * 1e3:10.2f}{b95 * 1e3:10.2f}")
        print(f"{'modeldepot serve /api/models':34}{c50 * 1e3:10.2f}{c95 * 1e3:10.2f}")
        print(f"ratio candidate/baseline: p50 {c50 / b50:.2f}x, p95 {c95 / b95:.2f}x")
        print(f"target p50 < 20 ms: {'met' if c50 < 0.020 else 'NOT met'} ({c50 * 1e3:.2f} ms)")
        print("results per search:", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
