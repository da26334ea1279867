#!/usr/bin/env bash
# Lint (ruff, with the complexity limits of pyproject.toml), then run the whole test suite:
# unit, component, integration and fault tiers.
# Creates .venv if missing and installs HakuRiver into it with `pip install .` (not editable),
# so the tests exercise exactly what a user installs, packaged config file included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q ".[test,lint]"
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
