#!/usr/bin/env bash
# Creates .venv (once) with everything this project needs; sourced by run-demo.sh and run-tests.sh.
# torch: kept if the venv already has one; otherwise torch==2.13.0 (on CPU machines a local file,
# elsewhere PyPI's build for the machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c "import awq_kernel_select, awq, matplotlib, mypy, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q -e ".[dev,bench]"
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
