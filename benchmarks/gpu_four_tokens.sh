#!/usr/bin/env bash
# On a CUDA machine, in one go, the GEMV layout at three and four tokens: the pair paths' GPU
# tests, the table at M = 2..8 on the tiles as shipped, the M = 4 sweep of the four-token pair
# tiles beside the 16-row tl.dot tiles that served M = 3..16 (the best go to the measured-facts
# overlay), then the table again in fp16 and bf16 on the overlay. Each step writes under OUT and
# is skipped once the time budget (default 540 s) is spent.
#   bash benchmarks/gpu_four_tokens.sh OUT [SECONDS]
set -uo pipefail
out=${1:?usage: gpu_four_tokens.sh OUT [SECONDS]}
budget=${2:-540}
mkdir -p "$out"
SECONDS=0

source "$(dirname "$0")/steps.sh"  # step NAME MAX_SECONDS COMMAND...

peers=(--shapes two --reps 10 --only fp16 ours_gemv_layout ours_gemm_layout tinygemm)
step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_tiles.py \
  -k "pair or four_token or tile_configurations"
tail -n 2 "$out/tests.log" 2>/dev/null; echo
step before 60 python3 -m benchmarks.kernels --ms 2 3 4 8 "${peers[@]}" --out "$out/before"
step sweep 280 python3 -m benchmarks.kernels --sweep --layouts gemv --sweep-ms 4 --sweep-match /BK128/ --quick-sweep \
  --out "$out/sweep"
cp -f "${AWQ_KERNEL_SELECT_CACHE:-$HOME/.cache/awq_kernel_select/measured.json}" "$out/measured.json" 2>/dev/null
grep -s '^{"K"' "$out/sweep.log" | cut -c1-240
for dtype in fp16 bf16; do
  step "after-$dtype" 60 python3 -m benchmarks.kernels --dtype "$dtype" --ms 2 3 4 8 "${peers[@]}" --out "$out/after-$dtype"
done
grep -s -h "^| " "$out"/before.log "$out"/after-*.log | head -60
