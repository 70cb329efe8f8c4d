"""`modeldepot dataset head --where` on a 1,000,000-row parquet dataset vs `datasets` `.filter()`.

Candidate: ``registry.dataset.head`` in-process (what the CLI calls), with ``limit=None`` so it
returns every matching row as Python dicts, the same work as the baseline (and, separately, the
CLI default ``-n 10``). Baseline: the same filter with ``datasets``: ``load_dataset("parquet")``
(a fresh cache each run) then ``.filter()``, both the common per-row lambda and the faster
``batched=True`` form. Each figure is the best of ``--runs`` rounds, taken in turns; the ratio is baseline time
divided by candidate time (above 1: ours is faster). Target: ours at least as fast.

    .venv/bin/python bench/bench_dataset_head.py [--rows 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

WORD = "paris"
WHERE = f"text contains '{WORD}' and score > 0.5"


def make_parquet(path: Path, rows: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from registry.samples import WORDS

    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)
    batch = 100_000
    with pq.ParquetWriter(str(path), pa.schema([("text", pa.string()), ("label", pa.int64()),
                                                ("score", pa.float64())])) as w:
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            picks = words[rng.integers(0, len(words), size=(n, 8))]
            text = [" ".join(r) for r in picks]
            w.write_table(pa.table({"text": text, "label": rng.integers(0, 2, n),
                                    "score": rng.random(n)}), row_group_size=batch)


def interleaved(fns: dict, runs: int) -> tuple[dict, dict]:
    """Best time of each function over ``runs`` rounds, taking turns within each round so that
    load from others on a shared machine falls on all of them alike."""
    times = {k: [] for k in fns}
    results = {}
    for _ in range(runs):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            results[key] = fn()
            times[key].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}, results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    import datasets

    from registry.config import Settings
    from registry.dataset import head
    from registry.depot import Depot
    from registry.importer import import_dir

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src" / "data"
        src.mkdir(parents=True)
        data = src / "train-00000-of-00001.parquet"
        make_parquet(data, args.rows)
        depot = Depot(Settings.from_env(env={}, home=tmp / "home"))
        import_dir(depot, src.parent, "bench/big", repo_type="dataset")
        print(f"{args.rows:,} rows, {data.stat().st_size / 1e6:.1f} MB parquet; where: {WHERE}")

        counter = iter(range(10**6))

        def load():
            return datasets.load_dataset("parquet", data_files=str(data), split="train",
                                         cache_dir=str(tmp / f"cache{next(counter)}"))

        ds = load()
        t, r = interleaved({
            "ours": lambda: head(depot, "bench/big", where=WHERE, limit=None),
            "ours10": lambda: head(depot, "bench/big", where=WHERE, limit=10),
            "load": load,
            "filter": lambda: ds.filter(lambda r: WORD in r["text"] and r["score"] > 0.5,
                                        load_from_cache_file=False),
            "batched": lambda: ds.filter(
                lambda b: [WORD in t and s > 0.5 for t, s in zip(b["text"], b["score"])],
                batched=True, load_from_cache_file=False),
        }, args.runs)
        t_ours, t_ours10, t_load, t_filter, t_batched = (
            t["ours"], t["ours10"], t["load"], t["filter"], t["batched"])
        ours, filtered, filtered_b = r["ours"], r["filter"], r["batched"]
        n = len(ours["rows"])
        assert n == len(filtered) == len(filtered_b), (n, len(filtered), len(filtered_b))
        assert ours["rows"][:100] == filtered.select(range(min(100, n))).to_list()
        print(f"matching rows: {n:,} (same rows from both)")
        print(f"candidate  head --where (all rows)         {t_ours:8.3f} s")
        print(f"candidate  head --where -n 10              {t_ours10:8.3f} s")
        print(f"baseline   load_dataset (fresh cache)      {t_load:8.3f} s")
        print(f"baseline   .filter(per-row lambda)         {t_filter:8.3f} s")
        print(f"baseline   .filter(batched=True)           {t_batched:8.3f} s")
        print(f"ratio  .filter(per row) / head:            {t_filter / t_ours:8.1f}x")
        print(f"ratio  .filter(batched) / head:            {t_batched / t_ours:8.1f}x")
        print(f"ratio  load + .filter(per row) / head:     {(t_load + t_filter) / t_ours:8.1f}x")


if __name__ == "__main__":
    main()
