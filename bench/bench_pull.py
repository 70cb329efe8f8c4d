"""Pull of a multi-file model from depot A (`modeldepot serve`) into a fresh depot B, vs
`huggingface_hub.snapshot_download` of the same repo from the same server into a fresh cache.

Both run in this process against one real server on loopback, alternating, each into a new
empty directory; the median wall time of each is compared. The candidate includes everything
a pull does: resolving the commit, refs, downloads (8 threads, like snapshot_download), sha256 +
git sha1 verification of every byte, and publishing into the registry. The baseline verifies
nothing but sizes.

Prints baseline, candidate and the ratio candidate/baseline. Target: ratio <= 1.1.

    .venv/bin/python bench/bench_pull.py [--size 1GiB] [--shards 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry.units import parse_size  # noqa: E402
from serverutil import running_server  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.hub import pull  # noqa: E402
from registry.importer import import_dir  # noqa: E402


def make_model(directory: Path, size: int, shards: int) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (directory / "tokenizer.json").write_bytes(os.urandom(2 << 20).hex().encode())
    per = size // shards
    block = os.urandom(8 << 20)
    for i in range(shards):
        with open(directory / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            left = per
            while left:
                # Distinct content per shard, so nothing is deduplicated.
                piece = bytes([i]) + block[1: min(left, len(block))]
                f.write(piece[: min(left, len(block))])
                left -= min(left, len(block))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="total size of the weight shards")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from huggingface_hub import snapshot_download

    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", size, args.shards)
        a = Depot(Settings.from_env(home=tmp / "a"))
        import_dir(a, tmp / "model", "bench/sharded")
        shutil.rmtree(tmp / "model")
        total = a.resolve("model", "bench/sharded")
        nbytes = sum(f["size"] for f in total["files"])
        with running_server(tmp / "a", ["--no-inference"]) as url:
            base, cand, base_cpu, cand_cpu = [], [], [], []
            for i in range(args.rounds + 1):  # round 0 warms the server and the page cache
                order = ("cand", "base") if i % 2 else ("base", "cand")
                for which in order:
                    out = tmp / f"{which}-{i}"
                    # A pull goes into an existing depot: creating its database is not timed.
                    depot = Depot(Settings.from_env(home=out)) if which == "cand" else None
                    t, cpu = time.perf_counter(), os.times()
                    if which == "base":
                        snapshot_download("bench/sharded", cache_dir=out, endpoint=url,
                                          token=False)
                    else:
                        result = pull(depot, "model", "bench/sharded", endpoint=url)
                        assert result.downloaded_bytes == nbytes
                    elapsed = time.perf_counter() - t
                    used = sum(os.times()[:2]) - sum(cpu[:2])
                    if i:
                        (base if which == "base" else cand).append(elapsed)
                        (base_cpu if which == "base" else cand_cpu).append(used)
                    shutil.rmtree(out)
        b, c = statistics.median(base), statistics.median(cand)
        print(f"pull of {len(total['files'])} files, {nbytes / 2**20:.0f} MiB, median of "
              f"{args.rounds}:")
        print(f"  baseline  snapshot_download  {b:6.2f} s  ({nbytes / b / 2**20:.0f} MiB/s)")
        print(f"  candidate modeldepot pull    {c:6.2f} s  ({nbytes / c / 2**20:.0f} MiB/s)")
        print(f"  ratio candidate/baseline: {c / b:.2f} (target <= 1.1: "
              f"{'met' if c / b <= 1.1 else 'NOT met'})")
        # On a shared machine wall time swings with other load; the client's CPU time (this
        # process, all threads, user + system) is the steadier figure.
        bc, cc = statistics.median(base_cpu), statistics.median(cand_cpu)
        print(f"  client CPU seconds: baseline {bc:.2f}, candidate {cc:.2f}, ratio {cc / bc:.2f}")
        print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
