#!/usr/bin/env bash
# On a CUDA machine: the GPU tests, or the model bench, on the transformers stack installed there;
# logs and results go to OUT, named by the transformers version. Run it once per stack, e.g. on
# transformers 4.51.3 and then 5.25.0, and compare the two.
#   bash benchmarks/gpu_stack_check.sh tests OUT     # kernels, attention, fusion, compile, stacks
#   bash benchmarks/gpu_stack_check.sh bench OUT     # the default bench at batch 1 and 16
set -uo pipefail
what=${1:?usage: gpu_stack_check.sh tests|bench OUT}
out=${2:?usage: gpu_stack_check.sh tests|bench OUT}
mkdir -p "$out"
version=$(python3 -c 'import transformers; print(transformers.__version__)')
SECONDS=0
case "$what" in
  tests)
    python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_kernels.py tests/test_kernel_tiles.py tests/test_fuse.py \
      tests/test_compile.py tests/test_stack.py tests/test_measured.py 2>&1 | tee "$out/tests-$version.log" | tail -4 ;;
  bench)
    python3 -m awq_kernel_select.cli bench --batch-sizes 1 16 --no-save --out "$out/bench-$version" \
      > "$out/bench-$version.log" 2>&1; tail -30 "$out/bench-$version.log" ;;
  *) echo "usage: gpu_stack_check.sh tests|bench OUT" >&2; exit 2 ;;
esac
echo "transformers $version: $what in ${SECONDS} s"
