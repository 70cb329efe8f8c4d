"""Scale-out: serving from an S3-compatible store, and two replicas behind nginx vs one.

Part 1, one large file (default 1 GiB) fetched by curl through `modeldepot serve`:
  baseline  = a replica on the local backend (sendfile from blobs/);
  candidates = a replica on S3 that has never cached the blob (streams the object), and the same
  with MODELDEPOT_BLOB_REDIRECT=1 (curl -L follows the presigned URL to the object store).
  The object store is moto in server mode on loopback (a Python server: real stores are faster).
Part 2, 64 concurrent clients (aiohttp, in this process) for --seconds each:
  small-file `resolve` and `/api/models?search=`, through nginx to 1 replica (baseline) and to 2
  replicas (candidate), sharing one SQLite registry and one bucket. Prints requests/s, the ratio,
  and the CPU each side used (replicas, nginx, load generator): on 2 cores the CPU caps it.

    .venv/bin/python bench/bench_scale_out.py [--size 1GiB] [--seconds 10] [--repos 300]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lbutil import Replica, nginx_balancer  # noqa: E402
from s3util import moto_server, new_bucket, s3_env  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot, FileRecord, compute_commit  # noqa: E402
from registry.units import human_size, parse_size  # noqa: E402


def curl_speed(url: str, follow: bool = False) -> float:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}"]
    if follow:
        args.append("-L")
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "200", out
    return float(out[0])


def publish_big(depot: Depot, path: Path) -> None:
    d = depot.store.ingest_file(path, label="weights.bin")
    files = [FileRecord.from_digest("weights.bin", d, lfs=True)]
    depot.publish(repo_type="model", name="bench/big", commit=compute_commit(files), files=files,
                  source="import")


def part1(tmp: Path, endpoint: str, size: int, rounds: int) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    big = tmp / "weights.bin"
    with open(big, "wb") as f:
        chunk = os.urandom(16 * 1024 * 1024)
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
    local_env = {"MODELDEPOT_DB_URL": f"sqlite:///{tmp}/local.db"}
    s3 = {**s3_env(endpoint, new_bucket(endpoint)), "MODELDEPOT_DB_URL": f"sqlite:///{tmp}/s3.db"}
    for env, home in ((local_env, tmp / "local"), (s3, tmp / "s3-writer")):
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            publish_big(Depot(Settings.from_env(home=home)), big)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    big.unlink()
    url = "/bench/big/resolve/main/weights.bin"
    servers = {"local": Replica(tmp / "local", local_env).wait(),
               "s3-stream": Replica(tmp / "s3-a", s3).wait(),
               "s3-redirect": Replica(tmp / "s3-b", {**s3, "MODELDEPOT_BLOB_REDIRECT": "1"}).wait()}
    try:
        speeds = {k: [] for k in servers}
        for _ in range(rounds):
            for name, r in servers.items():
                speeds[name].append(curl_speed(r.url + url, follow=name == "s3-redirect"))
    finally:
        for r in servers.values():
            r.stop()
    base = statistics.median(speeds["local"])
    print(f"part 1: one {human_size(size)} file through serve, median of {rounds}")
    print(f"  baseline  local store     {base / 2**20:8.1f} MiB/s")
    for name in ("s3-stream", "s3-redirect"):
        cand = statistics.median(speeds[name])
        print(f"  candidate {name:<14}  {cand / 2**20:8.1f} MiB/s   ratio {cand / base:.2f}")


async def load(url: str, paths: list[str], seconds: float, clients: int) -> tuple[int, int]:
    import aiohttp

    done = errors = 0
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker(i: int) -> None:
            nonlocal done, errors
            n = i
            while time.monotonic() < stop:
                try:
                    async with session.get(url + paths[n % len(paths)]) as r:
                        await r.read()
                        done += r.status == 200
                        errors += r.status != 200
                except aiohttp.ClientError:
                    errors += 1
                n += 1
        await asyncio.gather(*(worker(i) for i in range(clients)))
    return done, errors


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        p = psutil.Process(pid)
        for q in [p, *p.children(recursive=True)]:
            t = q.cpu_times()
            total += t.user + t.system
    return total


def part2(tmp: Path, endpoint: str, seconds: float, repos: int, clients: int) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**s3_env(endpoint, new_bucket(endpoint)), "MODELDEPOT_DB_URL": f"sqlite:///{tmp}/shared.db"}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        depot = Depot(Settings.from_env(home=tmp / "writer"))
        for i in range(repos):
            body = f'{{"model_type": "bert", "n": {i}}}'.encode()
            d = depot.store.ingest_stream(io.BytesIO(body), len(body), label="config.json")
            files = [FileRecord.from_digest("config.json", d, lfs=False)]
            depot.publish(repo_type="model", name=f"org{i % 7}/model-{i:05d}",
                          commit=compute_commit(files), files=files, source="import")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    workloads = {
        "resolve": [f"/org{i % 7}/model-{i:05d}/resolve/main/config.json" for i in range(repos)],
        "search": [f"/api/models?search=model-{i:03d}&limit=20" for i in range(0, repos, 3)],
    }
    import psutil

    print(f"part 2: {clients} concurrent clients, {seconds:.0f} s each, {repos} repos, "
          f"{os.cpu_count()} CPU cores")
    results = {}
    for n in (1, 2):
        replicas = [Replica(tmp / f"r{n}-{k}", env).wait() for k in range(n)]
        try:
            with nginx_balancer([r.port for r in replicas], tmp / f"nginx{n}", workers=1,
                                keepalive=64) as lb:
                nginx_pids = [p.pid for p in psutil.process_iter(["cmdline"])
                              if str(tmp / f"nginx{n}") in " ".join(p.info["cmdline"] or [])]
                moto_pids = [p.pid for p in psutil.process_iter(["cmdline"])
                             if "moto.server" in " ".join(p.info["cmdline"] or [])
                             and str(urlparse(endpoint).port) in p.info["cmdline"]]
                for name, paths in workloads.items():
                    pids = [r.proc.pid for r in replicas]
                    before = (cpu_seconds(pids), cpu_seconds(nginx_pids), time.process_time(),
                              cpu_seconds(moto_pids))
                    t0 = time.monotonic()
                    done, errors = asyncio.run(load(lb, paths, seconds, clients))
                    wall = time.monotonic() - t0
                    after = (cpu_seconds(pids), cpu_seconds(nginx_pids), time.process_time(),
                             cpu_seconds(moto_pids))
                    cpu = [(a - b) / wall for a, b in zip(after, before)]
                    results[(n, name)] = done / wall
                    print(f"  {n} replica(s) {name:<8} {done / wall:8.0f} req/s  errors {errors}  "
                          f"CPU cores used: replicas {cpu[0]:.2f}, nginx {cpu[1]:.2f}, "
                          f"load generator {cpu[2]:.2f}, object store {cpu[3]:.2f}")
        finally:
            for r in replicas:
                r.stop()
    for name in workloads:
        base, cand = results[(1, name)], results[(2, name)]
        print(f"  {name:<8} baseline 1 replica {base:8.0f} req/s, candidate 2 replicas "
              f"{cand:8.0f} req/s, ratio {cand / base:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repos", type=int, default=300)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--only", choices=["1", "2"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with moto_server(tmp) as endpoint:
            if args.only in (None, "1"):
                part1(tmp / "p1", endpoint, parse_size(args.size), args.rounds)
            if args.only in (None, "2"):
                part2(tmp / "p2", endpoint, args.seconds, args.repos, args.clients)


if __name__ == "__main__":
    main()
