#!/usr/bin/env bash
# The test suite: type checks, then pytest. Without a GPU the Triton kernels run in the
# interpreter (TRITON_INTERPRET=1, set in tests/conftest.py) at small shapes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
mypy --strict awq_kernel_select
python -m pytest -q -p no:cacheprovider tests "$@"
