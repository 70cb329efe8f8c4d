#!/usr/bin/env bash
# Set-up: a virtual environment in .venv with the exact versions in constraints.txt.
# torch is pinned to 2.13.0, whose CPU wheel pip finds locally; nothing here pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
