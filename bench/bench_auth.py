"""Throughput of `modeldepot serve` with access control and the access audit on vs off.

Two routes, each with 32 concurrent keep-alive clients (aiohttp, in this process) for a fixed
time: a small-file download (``/org/m/resolve/main/config.json``) and ``/api/models/org/m``.
Baseline: ``serve --auth none --no-audit`` (no middleware at all). Candidate: ``serve --auth
required`` with the audit on and every request carrying a token (resolves are all audited).
The servers are subprocesses on loopback, measured in turns (baseline, candidate, baseline, ...)
so drift on a shared machine hits both. Prints requests/s of each and the ratio (target >= 0.9).

    .venv/bin/python bench/bench_auth.py [--seconds 5] [--rounds 2] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from serverutil import running_server  # noqa: E402

from registry.auth.audit import records  # noqa: E402
from registry.auth.tokens import create_token  # noqa: E402
from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.importer import import_dir  # noqa: E402

ROUTES = {"resolve config.json": "/org/m/resolve/main/config.json",
          "/api/models/{id}": "/api/models/org/m"}


async def load(url: str, headers: dict, clients: int, seconds: float) -> float:
    """Requests per second that ``clients`` concurrent loops get from ``url``."""
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
        return done / (time.perf_counter() - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
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
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for label, (flags, headers) in setups.items():
                with running_server(home, ["--no-inference", *flags]) as url:
                    for route, path in ROUTES.items():
                        asyncio.run(load(url + path, headers, args.clients, 0.5))  # warm up
                        rate = asyncio.run(load(url + path, headers, args.clients, args.seconds))
                        results.setdefault((route, label), []).append(rate)
        audited = sum(1 for r in records(depot) if r["token"] == "bench")
        print(f"{args.clients} concurrent clients, {args.seconds:g} s x {args.rounds} rounds "
              f"per setup; {audited:,} downloads in the access audit")
        base_label, cand_label = list(setups)
        ok = True
        for route in ROUTES:
            base = max(results[(route, base_label)])
            cand = max(results[(route, cand_label)])
            ratio = cand / base
            ok = ok and ratio >= 0.9
            print(f"{route:22s} baseline {base:8.0f} req/s   candidate {cand:8.0f} req/s   "
                  f"ratio {ratio:.2f} (target >= 0.90)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
