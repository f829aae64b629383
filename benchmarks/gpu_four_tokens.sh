#!/usr/bin/env bash
# On a CUDA machine, in one go, the GEMV layout at one to four tokens: the pair paths' GPU tests,
# this checkout against another commit's kernels at M = 1-4 in fp16 and bf16 (alternating in one
# process: benchmarks/ab_kernels.py; only when AKS_AB_OTHER names a directory holding that
# commit's awq_kernel_select), the table at M = 2..8 on the tiles as shipped, the M = 4 sweep of the
# four-token pair tiles beside the 16-row tl.dot tiles (the best go to the measured-facts
# overlay), and the table at M = 1..8 in fp16 and bf16 against fp16 cuBLAS and every peer. Each
# step writes under OUT and is skipped once the time budget (default 540 s) is spent.
#   bash benchmarks/gpu_four_tokens.sh OUT [SECONDS] [tests] [ab] [before] [sweep] [after]  # default: all
#   git archive BASE awq_kernel_select | tar -x -C /tmp/base; AKS_AB_OTHER=/tmp/base bash ...   # for "ab"
set -uo pipefail
source "$(dirname "$0")/steps.sh"  # steps_init, step NAME MAX_SECONDS COMMAND...
steps_init gpu_four_tokens.sh 540 "tests ab before sweep after" "$@"

two=(--shapes two --reps 10)
step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_tiles.py \
  -k "pair or four_token or tile_configurations"
tail -n 2 "$out/tests.log" 2>/dev/null; echo
if [[ -n ${AKS_AB_OTHER:-} ]]; then
  step ab 160 python3 -m benchmarks.ab_kernels --other "$AKS_AB_OTHER" --ms 1 2 3 4 --dtypes fp16 bf16 --rounds 3 \
    --out "$out/ab.json"
  grep -s "other/this" "$out/ab.log" | sed 's/ \[[^]]*\]//g'
fi
step before 60 python3 -m benchmarks.kernels --ms 2 3 4 8 "${two[@]}" \
  --only fp16 ours_gemv_layout ours_gemm_layout tinygemm --out "$out/before"
step sweep 280 python3 -m benchmarks.kernels --sweep --layouts gemv --sweep-ms 4 --sweep-match /BK128/ --quick-sweep \
  --out "$out/sweep"
cp -f "${AWQ_KERNEL_SELECT_CACHE:-$HOME/.cache/awq_kernel_select/measured.json}" \
  "$out/measured.json" 2>/dev/null
grep -s '^{"K"' "$out/sweep.log" | cut -c1-240
[[ $steps == *" after "* ]] && steps="$steps after-fp16 after-bf16 "  # "after" names both
for dtype in fp16 bf16; do
  step "after-$dtype" 130 python3 -m benchmarks.kernels --dtype "$dtype" --ms 1 2 3 4 8 "${two[@]}" \
    --only fp16 ours_gemv_layout ours_gemm_layout tinygemm gemlite autoawq --out "$out/after-$dtype"
done
grep -s -h "^| " "$out"/before.log "$out"/after-*.log | head -80
