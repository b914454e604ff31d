#!/usr/bin/env bash
# Create .venv (if needed) and install oneepoch with what it needs; `setup.sh dev` adds the
# test tools (pytest and pytest-xdist, ruff, transformers and tensorboard for the export and
# event tests).
# torch==2.13.0 goes in first: a looser torch requirement with no torch installed makes pip
# fetch a multi-GB CUDA build. The built-in corpus's source packages come with the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
target=.
stamp=.venv/.oneepoch-installed
if [ "${1:-}" = dev ]; then
  target=".[dev]"
  stamp=.venv/.oneepoch-installed-dev
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e "$target"
  touch "$stamp"
fi
