"""`list --search TEXT --task T --limit 20` on a 100,000-repo registry: PostgreSQL vs SQLite.

Both registries are filled by bench_list.populate() with the same rows and queried through
``Depot.list_repos`` (the CLI's and the server's code path). Baseline: SQLite (the embedded
default); candidate: PostgreSQL on loopback (a throwaway cluster as the tests start it, or
``--pg-url``). Prints p50/p95 of each and the ratio.

    .venv/bin/python bench/bench_list_pg.py [--repos 100000] [--runs 200] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from bench_list import percentiles, populate  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402

QUERIES = [("bert", "text-classification"), ("mini", "fill-mask"),
           ("sentiment-ner", "token-classification"), ("nothing-matches", "summarization"),
           ("org17/", "text-generation")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repos", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--pg-url", help="an empty PostgreSQL database (default: a throwaway cluster)")
    args = p.parse_args()
    import pg

    cluster, depots = None, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.pg_url:
            pg_url = args.pg_url
        else:
            cluster = pg._start_cluster(Path(tempfile.mkdtemp(prefix="md-bench-pg-")))
            pg_url = cluster.create_database()
        try:
            depots = {
                "sqlite": Depot(Settings.from_env(home=Path(tmp) / "a")),
                "postgresql": Depot(Settings.from_env(home=Path(tmp) / "b", db_url=pg_url)),
            }
            for name, depot in depots.items():
                t0 = time.perf_counter()
                populate(depot, args.repos)
                print(f"{name}: populated {args.repos:,} repos in {time.perf_counter() - t0:.1f}s")
            times = {name: [] for name in depots}
            for i in range(args.runs):
                text, task = QUERIES[i % len(QUERIES)]
                got = {}
                for name, depot in depots.items():
                    t = time.perf_counter()
                    got[name] = [r["name"] for r in depot.list_repos(search=text, task=task, limit=20)]
                    times[name].append(time.perf_counter() - t)
                assert got["sqlite"] == got["postgresql"], (text, task)
            (b50, b95), (c50, c95) = percentiles(times["sqlite"]), percentiles(times["postgresql"])
            print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}")
            print(f"{'baseline: SQLite list_repos':34}{b50 * 1e3:10.2f}{b95 * 1e3:10.2f}")
            print(f"{'candidate: PostgreSQL list_repos':34}{c50 * 1e3:10.2f}{c95 * 1e3:10.2f}")
            print(f"ratio candidate/baseline: p50 {c50 / b50:.2f}x, p95 {c95 / b95:.2f}x")
        finally:
            for depot in depots.values():
                depot.db.dispose()
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
