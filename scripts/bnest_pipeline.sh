#!/usr/bin/env bash
# The RepQ paper's pipeline for BNEst (docs/repq.md, "The BNEst pipeline"): the full-precision stage trained
# with BN estimation too (`--qat bnest`, the paper's `elif self.BNEst:` branch), then each method from that
# model for the budget of our Table 2: one epoch of 5,000 training images, lr 0.001 cosine to 0, weights per
# output channel, one thread; PTQ (min-max, 16 batches of 128) beside them. Top-1 on all 10,000 test images.
# The FP stage is Table 2's: 15 epochs, seed 0. About 90 minutes on one idle core in all.
# usage: scripts/bnest_pipeline.sh [OUT]     (OUT: runs/bnest-pipeline; its *.log hold every run)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bnest-pipeline}
mkdir -p "$out"
fp=$out/fp15-bnest
if [ ! -f "$fp/best.safetensors" ]; then
  ./train cifar10 --qat bnest --epochs 15 --tmax 15 --seed 0 --threads 1 --out "$fp" > "$fp.log" 2>&1 \
    || { echo "FP stage failed: $fp.log"; exit 1; }
fi
echo "FP32 (--qat bnest, 15 epochs): $(grep -E '^done' "$fp.log")"
ckpt=$fp/best.safetensors
for b in 8 6 4; do
  ./ptq --ckpt "$ckpt" --bits "$b" --granularity channel --threads 1 > "$out/ptq-w$b.log" 2>&1
  echo "W$b/A$b ptq: $(grep -E "^$b/$b " "$out/ptq-w$b.log")"
  for m in merged repq-bn repq-bnest; do
    run=$out/$m-w$b
    rm -rf "$run"
    ./train cifar10 --init "$ckpt" --qat "$m" --bits "$b" --granularity channel --epochs 1 --tmax 1 \
      --limit-train 5000 --lr 0.001 --threads 1 --out "$run" > "$run.log" 2>&1
    echo "W$b/A$b $m: $(grep -E '^done|loss is' "$run.log")"
  done
done
