#!/usr/bin/env bash
# The test suite: type checks, the compatibility subset on each other end of the transformers
# range (each in its own environment, scripts/stack-env.sh), then the full suite on the main
# stack (scripts/constraints.txt). Without a GPU the Triton kernels run in the interpreter
# (TRITON_INTERPRET=1) at small shapes.
#   AKS_STACKS="5.25.0" bash scripts/run-tests.sh    # other stacks to run (default: both ends)
#   AKS_STACKS="" bash scripts/run-tests.sh -m "not slow"   # main stack only, fast subset
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
mypy --strict awq_kernel_select
# Each stack writes its checkpoints here and reads those of the stacks before it (tests/test_stack.py).
AKS_STACK_EXCHANGE=$(mktemp -d)
export AKS_STACK_EXCHANGE
trap 'rm -rf "$AKS_STACK_EXCHANGE"' EXIT
for version in ${AKS_STACKS-4.51.0 5.25.0}; do
  echo "== compatibility subset on transformers $version"
  (
    source scripts/stack-env.sh "$version"
    SECONDS=0
    python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m stack tests
    echo "transformers $version: compatibility subset in ${SECONDS} s"
  )
done
echo "== full suite on transformers $(python -c 'import transformers; print(transformers.__version__)')"
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=10 tests "$@"
