#!/usr/bin/env bash
# The test command: installs what it needs, then lints and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
# one worker per core, each file on one worker (its module fixtures run once)
.venv/bin/python -m pytest -q --numprocesses auto --dist loadfile "$@"
