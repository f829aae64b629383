#!/usr/bin/env bash
# Creates (once) and activates the environment of one other transformers version:
#   source scripts/stack-env.sh 5.25.0
# Each stack has its own virtual environment under .venv-stacks/; torch is the same build as in
# .venv (a local file on CPU machines). Sourced by run-tests.sh for the compatibility subset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STACK_VERSION=${1:?usage: source scripts/stack-env.sh TRANSFORMERS_VERSION}
STACK_DIR=.venv-stacks/transformers-$STACK_VERSION
PY=${PYTHON:-python3}
if [ ! -x "$STACK_DIR/bin/python" ]; then
  "$PY" -m venv "$STACK_DIR"
fi
if ! "$STACK_DIR/bin/python" -c "import torch" 2>/dev/null; then
  "$STACK_DIR/bin/pip" install -q torch==2.13.0
fi
EXTRAS=dev
case "$STACK_VERSION" in 5.*) EXTRAS=dev,compressed ;; esac  # compressed-tensors imports on 4.53+ only
if ! "$STACK_DIR/bin/python" -c "import awq_kernel_select, awq, pytest" 2>/dev/null \
   || [ pyproject.toml -nt "$STACK_DIR/.installed" ]; then
  "$STACK_DIR/bin/pip" install -q -e ".[$EXTRAS]" "transformers==$STACK_VERSION"
  touch "$STACK_DIR/.installed"
fi
export PATH="$PWD/$STACK_DIR/bin:$PATH"
