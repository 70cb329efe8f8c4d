"""What counting served downloads costs a request: ``HEAD /{repo}/resolve/main/config.json``
(a counted query file) against one in-process server, alternating between the app with the
download counter (candidate) and the same app with the counter removed (baseline).

Both run in one process, over one keep-alive connection each, interleaved so that machine noise
hits both alike. Prints p50/p95 per request and the ratio of the p50s; counting is one dict
update under a lock per request, the database write happens every few seconds in one batch.

    .venv/bin/python bench/bench_download_counts.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402
from serverutil import AppServer  # noqa: E402

from registry.config import Settings  # noqa: E402
from registry.depot import Depot  # noqa: E402
from registry.importer import import_dir  # noqa: E402
from registry.server.app import ServeOptions, create_app  # noqa: E402
from registry.server.client_compat import COUNTER  # noqa: E402


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "config.json").write_text('{"model_type": "bert"}')
        (src / "model.safetensors").write_bytes(b"\0" * 1024)
        settings = Settings.from_env(home=Path(tmp) / "home")
        import_dir(Depot(settings), src, "org/m")
        counted = create_app(settings, ServeOptions(inference=False))
        plain = create_app(settings, ServeOptions(inference=False))
        del plain[COUNTER]  # count_download() then does nothing
        with AppServer(counted) as a, AppServer(plain) as b:
            sa, sb = requests.Session(), requests.Session()
            path = "/org/m/resolve/main/config.json"
            for _ in range(50):  # warm up
                sa.head(a.url + path), sb.head(b.url + path)
            cand, base = [], []
            for _ in range(args.requests):
                t = time.perf_counter()
                assert sb.head(b.url + path).status_code == 200
                base.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert sa.head(a.url + path).status_code == 200
                cand.append(time.perf_counter() - t)
        counted_total = Depot(settings).list_repos()[0]["served_downloads"]
    print(f"{args.requests} HEAD requests of a counted file, each app")
    print(f"baseline  (no counter): p50 {_p(base, .5):.3f} ms  p95 {_p(base, .95):.3f} ms")
    print(f"candidate (counting):   p50 {_p(cand, .5):.3f} ms  p95 {_p(cand, .95):.3f} ms")
    print(f"ratio candidate/baseline p50: {statistics.median(cand) / statistics.median(base):.3f}")
    print(f"downloads recorded by the candidate: {counted_total} (expected {args.requests + 50})")
    return 0 if counted_total == args.requests + 50 else 1


if __name__ == "__main__":
    sys.exit(main())
