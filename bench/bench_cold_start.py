"""Cold start to first answer: `modeldepot run` on an ONNX MiniLM-L6-shaped classifier vs
`transformers.pipeline` on the same model, each a fresh process.

- candidate: ``modeldepot --home H run bench/minilm-clf "TEXT"`` (registry lookup, ONNX Runtime,
  the depot's ONNX derived revision), wall time from process start to the answer on stdout;
- baseline: ``python -c "from transformers import pipeline; ..."`` loading the same model
  (PyTorch, from the depot's snapshot directory, offline);
- both print the same answer (checked), median of ``--runs`` runs after one warm-up each (so the
  OS file cache is warm for both). Target: the candidate under 1.5 s.

    .venv/bin/python bench/bench_cold_start.py [--quick] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = "the film was good but the story was long"
PIPELINE = """
import json, sys
from transformers import pipeline
print(json.dumps(pipeline("text-classification", model=sys.argv[1])(sys.argv[2])))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{out.stderr}")
    return elapsed, out.stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 runs each")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    runs = 3 if args.quick else args.runs

    from registry import samples
    from registry.config import Settings
    from registry.depot import Depot
    from registry.export import export_onnx
    from registry.importer import import_dir

    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        home, src = Path(tmp) / "home", Path(tmp) / "minilm-clf"
        samples.bert_model(src, "sequence-classification", shape="minilm-l6")
        depot = Depot(Settings.from_env(home=home))
        import_dir(depot, src, "bench/minilm-clf")
        export_onnx(depot, "model", "bench/minilm-clf")
        snapshot = depot.resolve("model", "bench/minilm-clf")["snapshot"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_SAFETENSORS_CONVERSION": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        ours = [sys.executable, "-m", "cli", "--home", str(home), "run", "bench/minilm-clf", TEXT]
        theirs = [sys.executable, "-c", PIPELINE, snapshot, TEXT]
        results = {}
        for name, cmd in (("modeldepot run (onnx)", ours), ("transformers.pipeline", theirs)):
            timed(cmd, env)  # warm the file cache
            times, answers = [], set()
            for _ in range(runs):
                elapsed, out = timed(cmd, env)
                times.append(elapsed)
                answers.add(out)
            results[name] = (statistics.median(times), min(times), answers)
        a, b = (json.loads(next(iter(results[k][2]))) for k in results)
        assert a[0]["label"] == b[0]["label"] and abs(a[0]["score"] - b[0]["score"]) < 1e-4, (a, b)

    print(f"{'cold start to first answer':28} {'median s':>9} {'min s':>7}")
    for name, (median, best, _) in results.items():
        print(f"{name:28} {median:9.2f} {best:7.2f}")
    cand, base = results["modeldepot run (onnx)"][0], results["transformers.pipeline"][0]
    print(f"ratio (ours / pipeline): {cand / base:.2f}; target: ours under 1.5 s "
          f"({'met' if cand < 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
