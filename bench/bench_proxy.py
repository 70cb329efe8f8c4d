"""The pull-through proxy (`serve --proxy`) against direct downloads from the same upstream.

Depot A (`modeldepot serve`) holds one file of --size random bytes, on loopback. Sections 1
and 2 run once per upstream link of --links: `loopback` (A itself, a few GB/s: every process
of the path is CPU bound on this machine) and rates such as `1Gbit` (A behind bench/link.py, a
relay that holds A's answers to that rate, for the direct download and for the proxy alike:
what a mirror in front of a remote Hub sees).

1. cold miss: `hf_hub_download` of the file through a fresh proxy (nothing cached: the proxy
   fetches it from A, verifies sha256 and registers it; the client gets the last byte only once
   it verified) vs `hf_hub_download` of the same file straight from A, each into a fresh cache.
   Target: ratio <= 1.15. The same with `curl -o /dev/null` as the client is printed too (curl
   is far cheaper than a Python client, so that ratio shows the proxy's own cost). The CPU
   seconds each side used (client + A + relay + proxy) are printed: on loopback the proxy's
   path does strictly more work (a second TCP hop, writing the blob, sha256), and with two
   cores that work, not waiting, sets the wall time.
2. 16 clients on the same cold file through a fresh proxy: bytes the proxy received from A per
   file size (its /metrics counter; target 1.0), and the wall time until all 16 are done vs one
   direct download.
3. warm hit (loopback): the file through the (now warm) proxy vs a non-proxy `modeldepot
   serve` of the same depot. Target: throughput ratio >= 0.95.

Prints baseline, candidate and ratio for each, medians of --rounds alternating rounds.

    .venv/bin/python bench/bench_proxy.py [--size 1GiB] [--rounds 3] [--clients 16]
                                          [--links loopback,1Gbit]
"""

from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
from link import parse_rate  # noqa: E402
from serverutil import free_port, running_server, wait_http  # noqa: E402

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


class CPU:
    """CPU seconds (user + system) spent by this process, its children and the given
    servers, between two reads: what one side of a comparison cost the machine."""

    def __init__(self, *urls: str):
        self.procs = [server_process(u) for u in urls]
        self.start = self._now()

    def _now(self) -> float:
        own = psutil.Process().cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        return total + sum(sum(p.cpu_times()[:2]) for p in self.procs)

    def add(self, *urls: str) -> None:
        for u in urls:
            p = server_process(u)
            self.procs.append(p)
            self.start += sum(p.cpu_times()[:2])

    def spent(self) -> float:
        return self._now() - self.start


def server_process(url: str) -> psutil.Process:
    """The process listening on ``url``'s port (a server started by running_server)."""
    port = int(url.rsplit(":", 1)[1])
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return psutil.Process(c.pid)
    raise SystemExit(f"nothing listens on {url}")


@contextmanager
def fresh_proxy(root: Path, upstream: str, tag: str):
    home = root / f"proxy-{tag}"
    Depot(Settings.from_env(home=home))  # creating the database is not timed
    with running_server(home, ["--no-inference", "--proxy", upstream]) as url:
        yield url
    shutil.rmtree(home, ignore_errors=True)


@contextmanager
def link(url: str, rate: str):
    """``url`` as seen through a link of ``rate`` (bench/link.py); ``loopback``: as it is."""
    if rate == "loopback":
        yield url
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "link.py"), "--listen",
                             str(port), "--to", url.split("//", 1)[1], "--rate", rate])
    try:
        shaped = f"http://127.0.0.1:{port}"
        wait_http(shaped + "/health", timeout=30, proc=proc)
        yield shaped
    finally:
        proc.terminate()
        proc.wait()


def cold(root: Path, url_a: str, up: str, size: int, rounds: int, clients: int) -> dict:
    """Section 1 and 2 against the upstream as reached at ``up``."""
    res = {k: [] for k in ("hf_b", "hf_c", "curl_b", "curl_c", "cpu_b", "cpu_c")}
    shaped = [up] if up != url_a else []  # the relay's process counts on both sides
    for i in range(rounds):
        for which in (("b", "c") if i % 2 == 0 else ("c", "b")):
            if which == "b":
                cpu = CPU(url_a, *shaped)
                res["hf_b"].append(hf_get(up, root / "hf", size))
                res["cpu_b"].append(cpu.spent())
                res["curl_b"].append(curl(up + FILE, size))
                continue
            with fresh_proxy(root, up, f"cold{i}") as url_p:
                cpu = CPU(url_a, url_p, *shaped)
                res["hf_c"].append(hf_get(url_p, root / "hf", size))
                res["cpu_c"].append(cpu.spent())
            with fresh_proxy(root, up, f"curl{i}") as url_p:
                res["curl_c"].append(curl(url_p + FILE, size))
    with fresh_proxy(root, up, "fanout") as url_p:
        res["fan"] = curls(url_p + FILE, size, clients)
        res["fetched"] = upstream_bytes(url_p)
    return {k: statistics.median(v) if isinstance(v, list) else v for k, v in res.items()}


def report_cold(label: str, r: dict, size: int, rounds: int, clients: int) -> None:
    mib = size / 2**20
    b, c = r["hf_b"], r["hf_c"]
    print(f"upstream link: {label}")
    print(f"1. cold miss, medians of {rounds} rounds")
    print(f"  baseline  hf_hub_download direct    {b:6.2f} s  ({mib / b:6.0f} MiB/s)"
          f"  CPU {r['cpu_b']:5.2f} s")
    print(f"  candidate hf_hub_download via proxy {c:6.2f} s  ({mib / c:6.0f} MiB/s)"
          f"  CPU {r['cpu_c']:5.2f} s")
    print(f"  ratio candidate/baseline: {c / b:.2f} (target <= 1.15: "
          f"{'met' if c / b <= 1.15 else 'NOT met'}); CPU seconds ratio "
          f"{r['cpu_c'] / r['cpu_b']:.2f}")
    floor = r["cpu_c"] / (os.cpu_count() or 1)
    print(f"  on {os.cpu_count()} CPUs the candidate's CPU seconds alone take >= {floor:.2f} s, "
          f"a ratio >= {floor / b:.2f} however well they overlap")
    b, c = r["curl_b"], r["curl_c"]
    print(f"  with curl as the client: direct {b:.2f} s, through a cold proxy {c:.2f} s, "
          f"ratio {c / b:.2f}")
    print(f"2. {clients} clients on the same cold file")
    print(f"  upstream bytes / file size: {r['fetched'] / size:.2f} (target 1.0: "
          f"{'met' if abs(r['fetched'] / size - 1) < 1e-9 else 'NOT met'})")
    print(f"  baseline  one direct download (curl) {b:5.2f} s")
    print(f"  candidate all {clients} via the proxy       {r['fan']:6.2f} s")
    print(f"  ratio candidate/baseline: {r['fan'] / b:.2f}")


def local_work(root: Path, size: int) -> tuple[float, float]:
    """Seconds to write ``size`` bytes to a new file and to sha256 them, on this machine: the
    work a proxy adds to a download however it is written."""
    block = os.urandom(4 << 20)
    t = time.perf_counter()
    with open(root / "write-probe", "wb") as f:
        for i in range(0, size, len(block)):
            f.write(block[: min(len(block), size - i)])
    write = time.perf_counter() - t
    (root / "write-probe").unlink()
    h, t = hashlib.sha256(), time.perf_counter()
    for i in range(0, size, len(block)):
        h.update(block[: min(len(block), size - i)])
    return write, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="size of the file")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--links", default="loopback,1Gbit",
                   help="upstream links for sections 1-2: loopback and/or rates (500Mbit, 1Gbit)")
    args = p.parse_args()
    size = parse_size(args.size)
    links = [x.strip() for x in args.links.split(",") if x.strip()]
    for rate in links:
        if rate != "loopback":
            parse_rate(rate)
    load = os.getloadavg()[0]
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
        results = {}
        write_s, hash_s = local_work(root, size)
        with running_server(root / "a", ["--no-inference"]) as url_a:
            curl(url_a + FILE, size)  # warm A and the page cache
            for rate in links:
                with link(url_a, rate) as up:
                    results[rate] = cold(root, url_a, up, size, args.rounds, args.clients)
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
    print(f"proxy, one {mib:.0f} MiB file, {os.cpu_count()} CPUs; on this machine writing it "
          f"to a new file takes {write_s:.2f} s, its sha256 {hash_s:.2f} s")
    for rate in links:
        report_cold(rate, results[rate], size, args.rounds, args.clients)
    b, c = statistics.median(warm_b), statistics.median(warm_c)
    print("3. warm hit (loopback)")
    print(f"  baseline  non-proxy serve           {b:6.2f} s  ({mib / b:6.0f} MiB/s)")
    print(f"  candidate warm proxy                {c:6.2f} s  ({mib / c:6.0f} MiB/s)")
    print(f"  throughput ratio candidate/baseline: {b / c:.2f} (target >= 0.95: "
          f"{'met' if b / c >= 0.95 else 'NOT met'})")
    print(f"  load average before the run {load:.1f}, after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
