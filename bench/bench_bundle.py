"""Bundle create + import vs ``tar cf`` + ``sha256sum`` + ``tar xf`` of the same model files.

    .venv/bin/python bench/bench_bundle.py [--size 2G] [--rounds 1] [--dir /tmp]

Writes random bytes shaped like a model repo (two safetensors shards, an ONNX export, tokenizer
and config files), imports them into depot A (not timed), then times, in the same run:

  baseline   tar cf + sha256sum (every file) + tar xf, as subprocesses
  candidate  modeldepot bundle create (from A) + modeldepot bundle import (into fresh depot B),
             as the CLI a user runs (so Python start-up is included)

and prints both wall times and candidate/baseline. Rounds alternate; the best time of each wins.
Everything lives in a temp dir that is removed at the end. Needs about 4x SIZE of free disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (path, share of the total size); the small files get fixed sizes below.
LAYOUT = [("model-00001-of-00002.safetensors", 0.41), ("model-00002-of-00002.safetensors", 0.41),
          ("onnx/model.onnx", 0.17), ("tokenizer.json", 0.008)]
SMALL = [("config.json", 700), ("tokenizer_config.json", 1200), ("special_tokens_map.json", 125),
         ("vocab.txt", 231_508), ("README.md", 4000), ("generation_config.json", 120)]


def make_files(dst: Path, total: int) -> None:
    chunk = 16 * 1024 * 1024
    for rel, share in LAYOUT:
        p = dst / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        left = int(total * share)
        with open(p, "wb") as f:
            while left:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n
    for rel, size in SMALL:  # text files (the importer reads config.json and the card)
        text = os.urandom(size // 2).hex()
        (dst / rel).write_text(f'{{"pad": "{text}"}}' if rel.endswith(".json") else text)


def run(*cmd, **kw) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def baseline(src: Path, work: Path) -> float:
    tar, ext = work / "base.tar", work / "extracted"
    ext.mkdir()
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    t = time.perf_counter()
    run("tar", "cf", str(tar), "-C", str(src), ".")
    run("sha256sum", *files, cwd=src)
    run("tar", "xf", str(tar), "-C", str(ext))
    elapsed = time.perf_counter() - t
    tar.unlink()
    shutil.rmtree(ext)
    return elapsed


def candidate(home_a: Path, work: Path) -> tuple[float, float]:
    """(create, import) wall times."""
    out, home_b = work / "bench.bundle", work / "depot-b"
    cli = [sys.executable, "-m", "cli"]
    t0 = time.perf_counter()
    run(*cli, "--home", str(home_a), "bundle", "create", str(out), "bench/model", cwd=ROOT)
    t1 = time.perf_counter()
    run(*cli, "--home", str(home_b), "bundle", "import", str(out), cwd=ROOT)
    t2 = time.perf_counter()
    out.unlink()
    shutil.rmtree(home_b)
    return t1 - t0, t2 - t1


def main() -> int:
    from registry.units import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2G", help="total bytes of model files (default 2G)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where the temp dir goes (default: system temp)")
    args = ap.parse_args()
    total = parse_size(args.size)

    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.dir))
    try:
        src = work / "src"
        make_files(src, total)
        home_a = work / "depot-a"
        import_dir(Depot(Settings.from_env(home=home_a)), src, "bench/model")
        base, cand = [], []
        for _ in range(args.rounds):
            base.append(baseline(src, work))
            cand.append(candidate(home_a, work))
        b, (made, imported) = min(base), min(cand, key=sum)
        c = made + imported
        print(f"files: {total / 2**30:.2f} GiB in {len(LAYOUT) + len(SMALL)} files; rounds: {args.rounds}")
        print(f"baseline  tar cf + sha256sum + tar xf:      {b:7.2f} s  ({total / b / 2**20:6.0f} MiB/s)")
        print(f"candidate bundle create + bundle import:    {c:7.2f} s  ({total / c / 2**20:6.0f} MiB/s; "
              f"create {made:.2f} s, import {imported:.2f} s)")
        print(f"ratio candidate/baseline: {c / b:.2f} (target <= 1.30)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
