#!/usr/bin/env bash
# Our Table 2 of the RepQ paper for AC-ResNet-18 and OREPA-ResNet-18 on CIFAR-10 (docs/repq.md, "ResNet-18"):
# torchvision's ResNet-18, CIFAR stem, at base width 16 (stages 16, 32, 64, 128: 0.70 M deploy parameters, 35 M
# MACs; the full width trains 16x slower) with ACNet's or OREPA's blocks on every 3x3, and a plain one.
#   FP32        6 epochs of the 50,000 training images, cosine lr 0.1 -> 0, seed 0, one thread
#   PTQ         ./ptq, min-max calibration (16 batches of 128), weights per output channel
#   Plain       the plain ResNet-18's FP32 model, then QAT (LSQ, BNs folded with batch statistics: --qat repq-bn on
#               plain conv+BN blocks is the standard BN-folding QAT)
#   Merged, RepQ-BN, RepQ-BNEst   from the block's FP32 model (--qat merged | repq-bn | repq-bnest)
# Every QAT run: Table 2's budget, one epoch of 5,000 training images, lr 0.001 cosine to 0, weights per output
# channel. W8A8 and W4A4; top-1 on all 10,000 test images. Each quantized QAT model is also exported
# (./ptq --export) and run with integer kernels (./infer), its top-1 beside the fake-quantized one.
# One thread per run: the AC-ResNet FP stage took 40 minutes, the plain and OREPA ones 12-20; BLOCKS=acb and
# BLOCKS=orepa in two shells run side by side.
# usage: [BLOCKS="plain acb orepa"] scripts/resnet_table2.sh [OUT]     (OUT: runs/resnet-table2; its *.log hold
# every run; a finished run is not run again)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/resnet-table2}
mkdir -p "$out"
top1() { grep -E '^done' "$1" | grep -oE '[0-9.]+%' | head -1; }
for block in ${BLOCKS:-plain acb orepa}; do
  arch=resnet18-cifar-w16
  [ "$block" != plain ] && arch=$block-$arch
  fp=$out/$arch-fp
  if [ ! -f "$fp/best.safetensors" ]; then
    ./train cifar10 --arch "$arch" --epochs 6 --tmax 6 --seed 0 --threads 1 --out "$fp" > "$fp.log" 2>&1 \
      || { echo "$arch FP stage failed: $fp.log"; exit 1; }
  fi
  echo "$arch FP32: $(top1 "$fp.log")"
  ckpt=$fp/best.safetensors
  methods="merged repq-bn repq-bnest"
  [ "$block" = plain ] && methods="repq-bn"
  for b in 8 4; do
    ./ptq --ckpt "$ckpt" --bits "$b" --granularity channel --threads 1 > "$out/$arch-ptq-w$b.log" 2>&1
    echo "$arch W$b/A$b ptq: $(grep -E "^$b/$b " "$out/$arch-ptq-w$b.log")"
    for m in $methods; do
      run=$out/$arch-$m-w$b
      if [ ! -f "$run/last.safetensors" ]; then
        rm -rf "$run"
        ./train cifar10 --arch "$arch" --init "$ckpt" --qat "$m" --bits "$b" --granularity channel --epochs 1 --tmax 1 \
          --limit-train 5000 --lr 0.001 --threads 1 --out "$run" > "$run.log" 2>&1
      fi
      ./ptq --ckpt "$run/last.safetensors" --threads 1 --export "$run.int8.safetensors" > "$run.export.log" 2>&1
      ./infer --model "$run.int8.safetensors" --threads 1 > "$run.infer.log" 2>&1
      echo "$arch W$b/A$b $m: QAT $(top1 "$run.log"), fake-quant $(grep -E "^$b/$b " "$run.export.log" | awk '{print $2}'), integer $(grep -oE 'top-1 [0-9.]+%' "$run.infer.log")"
    done
  done
done
