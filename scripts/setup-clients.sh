#!/usr/bin/env bash
# A second environment, .venv-clients, with the Hub clients people have today (huggingface_hub
# 2.4, transformers 5.23, datasets 5.2; exact versions in constraints-clients.txt), for
# tests/test_clients_current.py. torch is pinned (2.13.0, the CPU wheel pip finds locally).
# modeldepot itself is not installed there: the tests run only client code in it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-clients/bin/python ]; then
    "$PY" -m venv .venv-clients
fi
.venv-clients/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
.venv-clients/bin/python -m pip install -q -c constraints-clients.txt \
    "huggingface_hub==2.4.0" "transformers==5.23.0" "datasets==5.2.0" "torch==2.13.0"
