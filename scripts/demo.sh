#!/usr/bin/env bash
# The main job, offline, on the embedded default (SQLite + a local depot): build a small model,
# import it, list and verify it, export it to ONNX (validated, int8-quantized), and answer an
# inference request from the ONNX export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MODELDEPOT_HOME=${MODELDEPOT_HOME:-$PWD/demo-home}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DISABLE_SAFETENSORS_CONVERSION=1
md() { echo "+ modeldepot $*"; .venv/bin/modeldepot "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "+ building a small BERT sentiment classifier (random weights) in $work/model"
.venv/bin/python -m registry.samples classifier "$work/model" >/dev/null
md import "$work/model" --repo demo/sentiment
md tag demo/sentiment prod
md list
md verify
md onnx export demo/sentiment --optimize O2 --quantize int8
md show demo/sentiment@onnx
md run demo/sentiment@prod "what a great movie"
md run demo/sentiment --int8 --json "what a terrible movie"
