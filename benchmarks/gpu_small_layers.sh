#!/usr/bin/env bash
# On a CUDA machine, in one go, SmolLM2-135M's small layers (576 wide, group 64), where launches
# and latency rather than bytes bound a decode step: the M = 1 tile sweep of both layouts (tiles
# of K = 64 to 2048, some taking all of a short K in one step; the best go to the measured-facts
# overlay, used by the steps after it), the M = 4 sweep of the GEMV layout's four-token tiles of
# 16 columns (those that won at M = 1), the kernel table at M = 1 and 4 against fp16 cuBLAS and
# the peers, and the model bench on the embedded model of those shapes. Each step writes under
# OUT and is skipped once the time budget (default 540 s) is spent. The sweep takes most of a
# 10-minute call: where calls are that short, run "sweep" in one and "sweep4 table bench" in the next on
# the same machine (the overlay stays in ~/.cache while it is up).
#   bash benchmarks/gpu_small_layers.sh OUT [SECONDS] [sweep] [sweep4] [table] [bench]   # default: all
set -uo pipefail
source "$(dirname "$0")/steps.sh"  # steps_init, step NAME MAX_SECONDS COMMAND...
steps_init gpu_small_layers.sh 540 "sweep sweep4 table bench" "$@"

small=(--shapes smollm2 --group 64)
step sweep 520 python3 -m benchmarks.kernels --sweep "${small[@]}" --layouts gemv gemm --sweep-ms 1 --quick-sweep \
  --out "$out/sweep"
step sweep4 150 python3 -m benchmarks.kernels --sweep "${small[@]}" --layouts gemv --sweep-ms 4 --sweep-match BM4/BN16/ \
  --out "$out/sweep4"
cp -f "${AWQ_KERNEL_SELECT_CACHE:-$HOME/.cache/awq_kernel_select/measured.json}" "$out/measured.json" 2>/dev/null
grep -s -h '^{"K"' "$out/sweep.log" "$out/sweep4.log" | cut -c1-200
step table 150 python3 -m benchmarks.kernels "${small[@]}" --ms 1 4 --reps 10 \
  --only fp16 ours_gemv_layout ours_gemm_layout tinygemm gemlite autoawq --out "$out/table"
step bench 360 python3 -m awq_kernel_select.cli bench --shape smollm2-135m --batch-sizes 1 4 --no-save --out "$out/bench"
grep -s -A 16 '^| variant | TTFT' "$out/bench.log"
