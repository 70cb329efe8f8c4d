"""Inference server throughput vs in-process batched throughput, same backend and model.

For each model shape (MiniLM-L6, BERT-base; random weights, since timing does not depend on
them) and task (sentence embeddings, classification), on the ONNX Runtime backend:

- baseline: the in-process runner (tokenize, ONNX Runtime, post-process) on batches of 32;
- candidate: the real `modeldepot serve` with 32 concurrent clients, one input per request
  (embeddings through /v1/embeddings, classification through /models/{repo});
- ratio = candidate / baseline inputs per second (target: at least 0.8);
- and p50/p99 latency of one client sending requests one after another.

The clients run in this process, on the same machine as the server: their CPU time counts
against the server (on 2 cores, that is a real share).

    .venv/bin/python bench/bench_inference_server.py [--quick] [--shapes minilm-l6,bert-base]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORDS = ("the film was good but the story was long and the end was sad; people in the city "
         "love the river at night and the old house on the hill").split()


def sentences(n: int, length: int = 24) -> list[str]:
    """Distinct sentences of about ``length`` words (about 30 tokens)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(length)) + f" {i}"
            for i in range(n)]


def build(home: Path, shape: str, kind: str) -> str:
    from registry import samples
    from registry.config import Settings
    from registry.depot import Depot
    from registry.export import export_onnx
    from registry.importer import import_dir

    repo = f"bench/{kind}-{shape}"
    src = home.parent / f"{kind}-{shape}"
    if kind == "embedder":
        samples.sentence_transformer(src, shape=shape)
    else:
        samples.bert_model(src, "sequence-classification", shape=shape)
    depot = Depot(Settings.from_env(home=home))
    import_dir(depot, src, repo)
    export_onnx(depot, "model", repo)
    return repo


def load(home: Path, repo: str, kind: str):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.inference.backends import load_model
    from registry.inference.source import from_registry

    source = from_registry(Depot(Settings.from_env(home=home)), repo)
    task = "feature-extraction" if kind == "embedder" else "text-classification"
    model = load_model(source, task, "onnx")
    assert model.backend == "onnx"
    return model


def baseline(model, texts: list[str], batch: int) -> float:
    """Inputs per second of the in-process runner on full batches."""
    model.run(texts[:batch], {})  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.run(texts[i:i + batch], {})
    return len(texts) / (time.perf_counter() - started)


def request(repo: str, kind: str, text: str) -> tuple[str, dict]:
    if kind == "embedder":
        return "/v1/embeddings", {"model": repo, "input": text}
    return f"/models/{repo}", {"inputs": text}


async def clients(url: str, repo: str, kind: str, texts: list[str], concurrency: int) -> float:
    from aiohttp import ClientSession, TCPConnector

    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:
        async def worker(mine: list[str]) -> None:
            for text in mine:
                path, body = request(repo, kind, text)
                async with session.post(url + path, json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()

        warm = texts[: concurrency * 2]
        await asyncio.gather(*(worker(warm[i::concurrency]) for i in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(texts[i::concurrency]) for i in range(concurrency)))
        return len(texts) / (time.perf_counter() - started)


async def one_client(url: str, repo: str, kind: str, texts: list[str]) -> list[float]:
    from aiohttp import ClientSession

    latencies = []
    async with ClientSession() as session:
        for text in texts:
            path, body = request(repo, kind, text)
            started = time.perf_counter()
            async with session.post(url + path, json=body) as r:
                await r.read()
            latencies.append(time.perf_counter() - started)
    return latencies[3:]  # the first requests warm the connection


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="MiniLM-L6 only, fewer requests")
    p.add_argument("--shapes", default="minilm-l6,bert-base")
    p.add_argument("--kinds", default="embedder,classifier")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best of each")
    args = p.parse_args()
    shapes = ["minilm-l6"] if args.quick else args.shapes.split(",")
    from serverutil import running_server

    print(f"{'model':28} {'baseline/s':>10} {'server/s':>9} {'ratio':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    worst = None
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for shape in shapes:
            per_shape = {"minilm-l6": 768, "bert-base": 256}[shape]
            n = per_shape // 4 if args.quick else per_shape // 2
            texts = sentences(n + args.concurrency * 2)
            for kind in args.kinds.split(","):
                home = Path(tmp) / f"home-{shape}-{kind}"
                repo = build(home, shape, kind)
                model = load(home, repo, kind)
                base = served = 0.0
                with running_server(home, ["--no-hub-api", "--models", repo, "--max-batch-size",
                                           str(args.concurrency), "--max-wait-ms", "5"]) as url:
                    # Alternate rounds and keep the best of each: other processes on a shared
                    # machine then hurt both sides alike instead of whichever ran second.
                    for _ in range(args.rounds):
                        base = max(base, baseline(model, texts[:n], args.concurrency))
                        served = max(served, asyncio.run(
                            clients(url, repo, kind, texts, args.concurrency)))
                    lat = asyncio.run(one_client(url, repo, kind, texts[:40 if args.quick else 103]))
                del model
                q = statistics.quantiles(lat, n=100)
                ratio = served / base
                worst = ratio if worst is None else min(worst, ratio)
                print(f"{repo:28} {base:10.1f} {served:9.1f} {ratio:6.2f} {q[49] * 1000:7.1f} "
                      f"{q[98] * 1000:7.1f}", flush=True)
    print(f"lowest ratio {worst:.2f} (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
