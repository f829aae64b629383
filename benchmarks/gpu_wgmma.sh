#!/usr/bin/env bash
# On an sm_90 GPU (H100, H200), in one go, the Gluon wgmma tile (kernels/hopper.py): its GPU tests,
# its correctness and times beside fp16 cuBLAS and the current dispatch at M = 8..4096 (fp16),
# the sweep that ships the tiles that beat the dispatch at M = 8..4096 into this GPU's measured
# tiles, and the kernel table at M = 8..4096 in fp16 and bf16 with every peer. Each step writes
# under OUT and is skipped once the time budget (default 560 s) is spent. Most of the time goes
# to compiling (14 tiles x 2 dtypes x 2 groups x bias in the tests, 18 tiles in the table, up to
# 60 per M in the sweep), so in 10-minute calls: "tests tiles", then "sweep", then "after".
#   bash benchmarks/gpu_wgmma.sh OUT [SECONDS] [tests] [tiles] [sweep] [after]   # default: all
#   AKS_WGMMA_SHAPES=two bash benchmarks/gpu_wgmma.sh ...   # the sweep's shapes (default: all)
set -uo pipefail
source "$(dirname "$0")/steps.sh"  # steps_init, step NAME MAX_SECONDS COMMAND...
steps_init gpu_wgmma.sh 560 "tests tiles sweep after" "$@"

step tests 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -k wgmma
tail -n 2 "$out/tests.log" 2>/dev/null; echo
step tiles 300 python3 -m benchmarks.hopper_tiles --out "$out/tiles"
grep -s -v "^check" "$out/tiles.log" | tail -n 16
grep -s "^check" "$out/tiles.log" | sort -t: -k2 -g | tail -n 3
step sweep 540 python3 -m benchmarks.hopper_tiles --sweep --ship --shapes "${AKS_WGMMA_SHAPES:-all}" \
  --out "$out/sweep"
grep -s -h '^{"K"' "$out/sweep.log" | cut -c1-200
cp -f awq_kernel_select/gpus/*.json "$out/" 2>/dev/null
[[ $steps == *" after "* ]] && steps="$steps after-fp16 after-bf16 "  # "after" names both
for dtype in fp16 bf16; do
  step "after-$dtype" 270 python3 -m benchmarks.kernels --dtype "$dtype" --ms 8 16 32 64 128 256 1024 4096 \
    --shapes two --reps 10 --only fp16 ours_gemv_layout ours_gemv_layout:wgmma tinygemm gemlite autoawq \
    --out "$out/after-$dtype"
done
grep -s -h "^| " "$out"/after-*.log | head -60
