#!/usr/bin/env bash
# The main job: installs what it needs into .venv, then runs `oneepoch demo` on the built-in
# corpus (one epoch vs ten epochs, power-law fit, wall-clock comparison, a text sample).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/oneepoch demo "$@"
