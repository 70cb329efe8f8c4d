"""The pull-through proxy (`serve --proxy`) against direct downloads from the same upstream.

Depot A (`modeldepot serve`) holds one file of --size random bytes, on loopback.

1. cold miss: `hf_hub_download` of the file through a fresh proxy (nothing cached: the proxy
   fetches it from A, verifies sha256 and registers it; the client gets the last byte only once
   it verified) vs `hf_hub_download` of the same file straight from A, each into a fresh cache.
   Target: ratio <= 1.15. The same with `curl -o /dev/null` as the client is printed too (curl
   is far cheaper than a Python client, so that ratio shows the proxy's own cost).
2. 16 clients on the same cold file through a fresh proxy: bytes the proxy received from A per
   file size (its /metrics counter; target 1.0), and the wall time until all 16 are done vs one
   direct download.
3. warm hit: the file through the (now warm) proxy vs a non-proxy `modeldepot serve` of the
   same depot. Target: throughput ratio >= 0.95.

Prints baseline, candidate and ratio for each, medians of --rounds alternating rounds.

    .venv/bin/python bench/bench_proxy.py [--size 1GiB] [--rounds 3] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serverutil import running_server  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.importer import import_dir  # noqa: E402
from registry.units import parse_size  # noqa: E402

FILE = "/bench/big/resolve/main/weights.bin"


def curl(url: str, size: int) -> float:
    t = time.perf_counter()
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          url], capture_output=True, text=True, check=True).stdout.split()
    elapsed = time.perf_counter() - t
    if out != ["200", str(size)]:
        raise SystemExit(f"bad transfer from {url}: {out}")
    return elapsed


def hf_get(url: str, cache: Path, size: int) -> float:
    from huggingface_hub import hf_hub_download

    t = time.perf_counter()
    path = hf_hub_download("bench/big", "weights.bin", endpoint=url, cache_dir=cache, token=False)
    elapsed = time.perf_counter() - t
    if os.path.getsize(path) != size:
        raise SystemExit(f"bad download from {url}")
    shutil.rmtree(cache)
    return elapsed


def curls(url: str, size: int, n: int) -> float:
    t = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download}", url],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate()[0].split() for p in procs]
    elapsed = time.perf_counter() - t
    bad = [o for o in outs if o != ["200", str(size)]]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} transfers from {url} were incomplete: {bad[:3]}")
    return elapsed


def upstream_bytes(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    m = re.search(r"^modeldepot_proxy_upstream_bytes_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@contextmanager
def fresh_proxy(root: Path, upstream: str, tag: str):
    home = root / f"proxy-{tag}"
    Depot(Settings.from_env(home=home))  # creating the database is not timed
    with running_server(home, ["--no-inference", "--proxy", upstream]) as url:
        yield url
    shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="size of the file")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        (src / "config.json").write_text("{}\n")
        block = os.urandom(8 << 20)
        with open(src / "weights.bin", "wb") as f:
            for i in range(0, size, len(block)):
                f.write(block[: min(len(block), size - i)])
        import_dir(Depot(Settings.from_env(home=root / "a")), src, "bench/big")
        shutil.rmtree(src)
        with running_server(root / "a", ["--no-inference"]) as url_a:
            curl(url_a + FILE, size)  # warm A and the page cache
            cold_b, cold_c, curl_b, curl_c = [], [], [], []
            for i in range(args.rounds):
                for which in (("b", "c") if i % 2 == 0 else ("c", "b")):
                    if which == "b":
                        cold_b.append(hf_get(url_a, root / "hf", size))
                        curl_b.append(curl(url_a + FILE, size))
                        continue
                    with fresh_proxy(root, url_a, f"cold{i}") as url_p:
                        cold_c.append(hf_get(url_p, root / "hf", size))
                    with fresh_proxy(root, url_a, f"curl{i}") as url_p:
                        curl_c.append(curl(url_p + FILE, size))
            single = statistics.median(curl_b)
            with fresh_proxy(root, url_a, "fanout") as url_p:
                fan = curls(url_p + FILE, size, args.clients)
                fetched = upstream_bytes(url_p)
            with fresh_proxy(root, url_a, "warm") as url_p:
                curl(url_p + FILE, size)  # the miss that makes it warm
                warm_b, warm_c = [], []
                for i in range(args.rounds):
                    for which in (("b", "c") if i % 2 == 0 else ("c", "b")):
                        if which == "b":
                            warm_b.append(curl(url_a + FILE, size))
                        else:
                            warm_c.append(curl(url_p + FILE, size))
    mib = size / 2**20
    b, c = statistics.median(cold_b), statistics.median(cold_c)
    print(f"proxy, one {mib:.0f} MiB file, medians of {args.rounds} rounds:")
    print("1. cold miss")
    print(f"  baseline  hf_hub_download direct    {b:6.2f} s  ({mib / b:6.0f} MiB/s)")
    print(f"  candidate hf_hub_download via proxy {c:6.2f} s  ({mib / c:6.0f} MiB/s)")
    print(f"  ratio candidate/baseline: {c / b:.2f} (target <= 1.15: "
          f"{'met' if c / b <= 1.15 else 'NOT met'})")
    b, c = statistics.median(curl_b), statistics.median(curl_c)
    print(f"  with curl as the client: direct {b:.2f} s, through a cold proxy {c:.2f} s, "
          f"ratio {c / b:.2f}")
    print(f"2. {args.clients} clients on the same cold file")
    print(f"  upstream bytes / file size: {fetched / size:.2f} (target 1.0: "
          f"{'met' if abs(fetched / size - 1) < 1e-9 else 'NOT met'})")
    print(f"  baseline  one direct download (curl) {single:5.2f} s")
    print(f"  candidate all {args.clients} via the proxy       {fan:6.2f} s")
    print(f"  ratio candidate/baseline: {fan / single:.2f}")
    b, c = statistics.median(warm_b), statistics.median(warm_c)
    print("3. warm hit")
    print(f"  baseline  non-proxy serve           {b:6.2f} s  ({mib / b:6.0f} MiB/s)")
    print(f"  candidate warm proxy                {c:6.2f} s  ({mib / c:6.0f} MiB/s)")
    print(f"  throughput ratio candidate/baseline: {b / c:.2f} (target >= 0.95: "
          f"{'met' if b / c >= 0.95 else 'NOT met'})")
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
