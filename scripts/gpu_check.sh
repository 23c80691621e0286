#!/usr/bin/env bash
# The GPU check of the fast fine-tuning issue, in one script (planned to take under 8 minutes on
# one H100):
#   1. scripts/benchmark.py on the device: forward, explain and the bf16 training step at batch
#      64, side by side with torchvision and the reference `bcos` models, with peak memory;
#   2. scripts/gpu_check.py: explanations under bf16/fp16 autocast on the device (completeness,
#      agreement with float32) and a short bf16 fine-tune through the recipes' data loader.
# Results: OUT/benchmark/results.{json,md} and OUT/gpu_check.{json,md}.
#
#   bash scripts/gpu_check.sh                                   # on a GPU: benchmarks/gpu
#   bash scripts/gpu_check.sh --device cpu --quick --out DIR    # the CPU dry run CI makes
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
quick=0
out=benchmarks/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
start=$(date +%s)

if [ "$quick" = 1 ]; then
  python scripts/benchmark.py --quick --device "$device" --amp bf16 --no-memory \
    --out "$out/benchmark"
  python scripts/gpu_check.py --device "$device" --quick --out "$out"
else
  python scripts/benchmark.py --device "$device" --archs resnet50 --batches 64 \
    --explain-batch 64 --explain-rounds 3 --rounds 5 --train-batch 64 --train-size 224 \
    --train-rounds 5 --amp bf16 --convert-archs resnet50 --import-repeats 1 \
    --out "$out/benchmark"
  python scripts/gpu_check.py --device "$device" --out "$out"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $out"
