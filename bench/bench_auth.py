"""Throughput of `modeldepot serve` with access control and the access audit on vs off.

Two routes, each with 32 concurrent keep-alive clients (aiohttp, in this process) for a fixed
time: a small-file download (``/org/m/resolve/main/config.json``) and ``/api/models/org/m``.
Baseline: ``serve --auth none --no-audit`` (no middleware at all). Candidate: ``serve --auth
required`` with the audit on and every request carrying a token (resolves are all audited).
Both servers are subprocesses on loopback, up at once, and measured in short alternating
windows (baseline, candidate, baseline, ...) so that load from elsewhere on a shared machine hits
both alike. Prints requests/s of each and the ratio (target >= 0.9), and the server's CPU time
per request (from /proc), whose ratio is the throughput ratio of a CPU-bound server and is far
less disturbed by other work on the machine than wall-clock rates are.

    .venv/bin/python bench/bench_auth.py [--seconds 1] [--rounds 10] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from serverutil import free_port, stop_process, wait_http  # noqa: E402

from registry.auth.audit import records  # noqa: E402
from registry.auth.tokens import create_token  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.importer import import_dir  # noqa: E402

ROUTES = {"resolve config.json": "/org/m/resolve/main/config.json",
          "/api/models/{id}": "/api/models/org/m"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(home: Path, flags: list[str]):
    """``modeldepot serve`` in a subprocess: (url, pid)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), "serve", "--port",
                             str(port), "--no-inference", *flags], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc=proc)
        yield url, proc.pid
    finally:
        stop_process(proc)


async def load(url: str, headers: dict, clients: int, seconds: float) -> tuple[float, int]:
    """Requests per second that ``clients`` concurrent loops get from ``url``, and how many."""
    done = 0
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.get(url) as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started), done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    p.add_argument("--rounds", type=int, default=10, help="windows per setup and route")
    p.add_argument("--clients", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        depot = Depot(Settings.from_env(home=home))
        model = Path(tmp) / "m"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
        (model / "model.safetensors").write_bytes(b"\0" * 4096)
        import_dir(depot, model, "org/m")
        token, _ = create_token(depot, "bench", ["read"], actor="bench")
        setups = {
            "baseline (auth and audit off)": (["--auth", "none", "--no-audit"], {}),
            "candidate (auth required, audit on)": (["--auth", "required"],
                                                    {"Authorization": f"Bearer {token}"}),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        with contextlib.ExitStack() as stack:
            servers = {label: stack.enter_context(server(home, flags))
                       for label, (flags, _headers) in setups.items()}
            for route, path in ROUTES.items():
                for label, (_flags, headers) in setups.items():  # warm up
                    asyncio.run(load(servers[label][0] + path, headers, args.clients, 0.5))
                for _ in range(args.rounds):
                    for label, (_flags, headers) in setups.items():
                        url, pid = servers[label]
                        before = cpu_seconds(pid)
                        rate, count = asyncio.run(load(url + path, headers, args.clients,
                                                       args.seconds))
                        rates.setdefault((route, label), []).append(rate)
                        cpu.setdefault((route, label), []).append(
                            (cpu_seconds(pid) - before) / count * 1e6)
        audited = sum(1 for r in records(depot) if r["token"] == "bench")
        print(f"{args.clients} concurrent clients, {args.rounds} alternating windows of "
              f"{args.seconds:g} s per setup and route (medians); {audited:,} downloads in the "
              "access audit")
        base_label, cand_label = list(setups)
        ok = True
        for route in ROUTES:
            base = statistics.median(rates[(route, base_label)])
            cand = statistics.median(rates[(route, cand_label)])
            base_cpu = statistics.median(cpu[(route, base_label)])
            cand_cpu = statistics.median(cpu[(route, cand_label)])
            ok = ok and base_cpu / cand_cpu >= 0.9
            print(f"{route:20s} baseline {base:6.0f} req/s {base_cpu:6.0f} us CPU/req | "
                  f"candidate {cand:6.0f} req/s {cand_cpu:6.0f} us CPU/req | ratio "
                  f"{cand / base:.2f} wall, {base_cpu / cand_cpu:.2f} CPU (target >= 0.90)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
