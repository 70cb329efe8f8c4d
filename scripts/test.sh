#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests drive for real (Chromium, nginx, PostgreSQL 15), when missing
bash scripts/setup-system.sh
bash scripts/setup.sh
# the current Hub clients, for tests/test_clients_current.py
bash scripts/setup-clients.sh
exec .venv/bin/python -m pytest -q "$@"
