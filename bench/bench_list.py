"""`modeldepot list --search TEXT --task T --limit 20` on a 100,000-repo registry.

Candidate: ``Depot.list_repos`` in-process (what the CLI and the server call), including its
second query for revision counts and sizes. Baseline: the same filter as one plain, indexed
SQLite query through the sqlite3 module. Prints p50/p95 of both and their ratio. Target: p50 of
the candidate under 20 ms.

    .venv/bin/python bench/bench_list.py [--repos 100000] [--runs 200]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.models import Blob, File, Ref, Repo, Revision  # noqa: E402

TASKS = ["text-classification", "token-classification", "question-answering", "fill-mask",
         "feature-extraction", "text-generation", "summarization", "translation",
         "sentence-similarity", "text2text-generation"]
WORDS = ["bert", "roberta", "gpt", "t5", "bart", "mini", "lm", "base", "large", "small", "tiny",
         "distil", "multilingual", "sentiment", "ner", "squad", "chat", "instruct", "code", "news"]


def populate(depot: Depot, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = datetime(2026, 1, 1)
    repos, revisions, files, blobs, refs = [], [], [], [], []
    for i in range(1, n + 1):
        author = f"org{rng.randrange(2000)}"
        name = f"{author}/{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}"
        repos.append(dict(id=i, type="model", name=name, author=author,
                          pipeline_tag=rng.choice(TASKS), library_name="transformers",
                          tags=[], private=False, meta={}, downloads=rng.randrange(10**6),
                          created_at=now, updated_at=now))
        commit = f"{i:040x}"
        revisions.append(dict(id=i, repo_id=i, commit=commit, source="import", complete=True,
                              size=rng.randrange(10**9), file_count=1, meta={}, created_at=now))
        sha = f"{i:064x}"
        blobs.append(dict(sha256=sha, size=100, created_at=now))
        files.append(dict(revision_id=i, path="model.safetensors", size=100, sha256=sha,
                          git_sha1=commit, lfs=True, verification="local"))
        refs.append(dict(repo_id=i, name="main", kind="branch", commit=commit, updated_at=now))
    with depot.db.session(write=True) as s:
        for model, rows in [(Repo, repos), (Revision, revisions), (Blob, blobs), (File, files),
                            (Ref, refs)]:
            for k in range(0, len(rows), 5000):
                s.execute(insert(model), rows[k:k + 5000])
    with depot.db.engine.begin() as conn:  # committed: PostgreSQL's statistics are transactional
        conn.exec_driver_sql("ANALYZE")


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repos", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        depot = Depot(Settings.from_env(home=Path(tmp) / "home"))
        t0 = time.perf_counter()
        populate(depot, args.repos)
        print(f"populated {args.repos:,} repos in {time.perf_counter() - t0:.1f}s")
        queries = [("bert", "text-classification"), ("mini", "fill-mask"),
                   ("sentiment-ner", "token-classification"), ("nothing-matches", "summarization"),
                   ("org17/", "text-generation")]
        db_path = str(Path(tmp) / "home" / "depot.db")
        raw = sqlite3.connect(db_path)
        sql = ("SELECT id, name FROM repos WHERE type = 'model' AND pipeline_tag = ? "
               "AND name LIKE ? ESCAPE '\\' ORDER BY name LIMIT 20")
        base, cand = [], []
        counts = {}
        for i in range(args.runs):
            text, task = queries[i % len(queries)]
            t = time.perf_counter()
            rows = raw.execute(sql, (task, f"%{text}%")).fetchall()
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = depot.list_repos(search=text, task=task, limit=20)
            cand.append(time.perf_counter() - t)
            counts[(text, task)] = (len(rows), len(result))
            assert [r["name"] for r in result] == [r[1] for r in rows]
        b50, b95 = percentiles(base)
        c50, c95 = percentiles(cand)
        print(f"{'':28}{'p50 ms':>10}{'p95 ms':>10}")
        print(f"{'baseline (sqlite3, 1 query)':28}{b50 * 1e3:10.2f}{b95 * 1e3:10.2f}")
        print(f"{'modeldepot list_repos':28}{c50 * 1e3:10.2f}{c95 * 1e3:10.2f}")
        print(f"ratio candidate/baseline: p50 {c50 / b50:.2f}x, p95 {c95 / b95:.2f}x")
        print(f"target p50 < 20 ms: {'met' if c50 < 0.020 else 'NOT met'} ({c50 * 1e3:.2f} ms)")
        print("rows per query:", {f"{t}/{k}": c for (t, k), c in counts.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
