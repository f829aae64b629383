#!/usr/bin/env bash
# The main job: detect the GPU, pick the kernel, and benchmark GEMM vs GEMV on the embedded
# 7B-shaped model (on a machine without a GPU: a tiny model on the CPU path, and it says so).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
awq-kernel-select detect
echo
awq-kernel-select select
echo
awq-kernel-select bench --out bench-results "$@"
