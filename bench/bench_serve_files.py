"""File serving: one large file fetched by curl from `modeldepot serve` vs from nginx.

Both servers run on loopback and serve the very same bytes (nginx's root is the depot's blob
directory, sendfile on). Each fetch is `curl -o /dev/null`; the two servers alternate, after one
warm-up fetch each, and the median throughput of each is compared. Then 16 clients fetch the
file at once from each server; every transfer must be complete (status 200, full size).

Prints baseline (nginx), candidate (modeldepot) and the ratio candidate/baseline for both
runs. Target: ratio >= 1.0, and no errors with 16 concurrent clients.

    .venv/bin/python bench/bench_serve_files.py [--size 1GiB] [--rounds 3] [--clients 16]

nginx must be installed (`apt-get install -y nginx`); without it the baseline is skipped and
the script says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serverutil import free_port, running_server, stop_process, wait_http  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.importer import import_dir  # noqa: E402
from registry.units import parse_size  # noqa: E402

NGINX_CONF = """
worker_processes 1;
{user}
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /health {{ return 200 'ok'; }}
    }}
}}
"""


def make_model(directory: Path, size: int) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "bert"}')
    chunk = os.urandom(16 << 20)
    with open(directory / "model.safetensors", "wb") as f:
        left = size
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def curl(url: str) -> tuple[int, int, float]:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w",
                          "%{http_code} %{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def concurrent(url: str, clients: int, size: int) -> tuple[float, int]:
    """Aggregate bytes/s of ``clients`` simultaneous fetches, and how many failed."""
    t = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download}", url],
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    results = [p.communicate()[0].split() for p in procs]
    elapsed = time.perf_counter() - t
    errors = sum(1 for r in results if r != ["200", str(size)])
    return clients * size / elapsed, errors


def start_nginx(root: Path, prefix: Path) -> tuple[subprocess.Popen, str] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        return None
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;" if os.geteuid() == 0 else "", prefix=prefix, port=port, root=root))
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=20, proc=proc)
    return proc, url


def gbps(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 2**30:.2f} GiB/s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="file size, e.g. 1GiB, 256MiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()
    size = parse_size(args.size)
    if shutil.which("curl") is None:
        print("curl is missing: install it (apt-get install -y curl)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", size)
        depot = Depot(Settings.from_env(home=tmp / "home"))
        result = import_dir(depot, tmp / "model", "bench/big")
        shutil.rmtree(tmp / "model")
        sha = next(f["sha256"] for f in depot.resolve("model", "bench/big")["files"]
                   if f["path"] == "model.safetensors")
        nginx = start_nginx(depot.settings.blobs_dir, tmp / "nginx")
        if nginx is None:
            print("nginx is NOT installed: no baseline (apt-get install -y nginx)")
        try:
            with running_server(tmp / "home", ["--no-inference"]) as url:
                cand_url = f"{url}/bench/big/resolve/{result.commit}/model.safetensors"
                base_url = f"{nginx[1]}/{sha[:2]}/{sha}" if nginx else None
                for u in filter(None, (cand_url, base_url)):  # warm-up, and check the bytes
                    status, got, _t = curl(u)
                    assert (status, got) == (200, size), (u, status, got)
                cand, base = [], []
                for _ in range(args.rounds):
                    cand.append(size / curl(cand_url)[2])
                    if base_url:
                        base.append(size / curl(base_url)[2])
                c = statistics.median(cand)
                print(f"single client, {args.size} file, median of {args.rounds}:")
                if base:
                    b = statistics.median(base)
                    print(f"  baseline  nginx       {gbps(b)}")
                print(f"  candidate modeldepot  {gbps(c)}")
                if base:
                    print(f"  ratio candidate/baseline: {c / b:.3f} (target >= 1.0: "
                          f"{'met' if c / b >= 1.0 else 'NOT met'})")
                c_conc, c_err = concurrent(cand_url, args.clients, size)
                print(f"{args.clients} concurrent clients:")
                if base_url:
                    b_conc, b_err = concurrent(base_url, args.clients, size)
                    print(f"  baseline  nginx       {gbps(b_conc)} aggregate, {b_err} errors")
                print(f"  candidate modeldepot  {gbps(c_conc)} aggregate, {c_err} errors")
                if base_url:
                    print(f"  ratio candidate/baseline: {c_conc / b_conc:.3f}")
                print(f"no errors with {args.clients} clients: {'met' if c_err == 0 else 'NOT met'}")
        finally:
            if nginx:
                stop_process(nginx[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
