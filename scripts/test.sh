#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the current Hub clients, for tests/test_clients_current.py
bash scripts/setup-clients.sh
exec .venv/bin/python -m pytest -q "$@"
