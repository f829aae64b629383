#!/usr/bin/env bash
# On a CUDA machine, in one go: the GEMV kernels' GPU tests, this checkout timed against a base
# commit's package (benchmarks/ab_kernels.py: M = 1 and 2, fp16 and bf16, alternating in one
# process), then the kernel table at M = 1..4096 in bf16 and fp16 (two shapes). Each step writes
# its log and JSON under OUT and is skipped once the time budget (default 540 s) is spent, so a
# call with a time limit still returns the steps it finished.
#   git archive 94d073e awq_kernel_select | tar -x -C BASE      # the base, where git is at hand
#   bash benchmarks/gpu_kernel_check.sh BASE OUT [SECONDS]
set -uo pipefail
base=${1:?usage: gpu_kernel_check.sh BASE OUT [SECONDS]}
out=${2:?usage: gpu_kernel_check.sh BASE OUT [SECONDS]}
budget=${3:-540}
mkdir -p "$out"
SECONDS=0

source "$(dirname "$0")/steps.sh"  # step NAME MAX_SECONDS COMMAND...

nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu,power.draw --format=csv > "$out/gpu.csv"
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_tiles.py \
  -k "pair or bf16 or tile_configurations or silu or last_tile or one_token or streams or every_path"
tail -n 2 "$out/tests.log" 2>/dev/null; echo
step ab 150 python3 -m benchmarks.ab_kernels --other "$base" --ms 1 2 --dtypes fp16 bf16 --shapes all \
  --rounds 3 --out "$out/ab.json"
grep -s "M=" "$out/ab.log" | cut -c1-200
for dtype in bf16 fp16; do
  step "table-$dtype" 280 python3 -m benchmarks.kernels --dtype "$dtype" --ms 1 2 4 8 16 32 64 128 256 1024 4096 \
    --shapes two --reps 10 --only fp16 ours_gemv_layout ours_gemm_layout tinygemm gemlite autoawq --out "$out/$dtype"
done
