#!/usr/bin/env bash
# ClusterQAT's acceptance table (README, docs/cluster.md): from a trained full-precision repvgg-cifar,
# PTQ and two QAT methods at weight bit widths BITS, activations at 8 bits, every QAT run the same budget:
# 3 epochs of 10,000 training images (spread over the set), lr 0.01 cosine to 0, one thread, scored on all
# 10,000 test images. About 3 minutes a run on an idle core; runs/accept-TAG-* hold the runs and logs.
# usage: scripts/cluster_acceptance.sh TAG CKPT [BITS] [METHODS] [EXTRA TRAIN OPTIONS]
#   e.g. scripts/cluster_acceptance.sh oabn runs/fp15-oabn/best.safetensors "4 3 2" "cluster repq-bn-channel" --oabn-k 3
# METHODS: cluster (one codebook a layer), repq-bn (LSQ, per-layer steps), repq-bn-channel (per channel).
set -uo pipefail
tag=$1 ckpt=$2 bits=${3:-4 3 2} methods=${4:-cluster repq-bn-channel}
shift $(($# < 4 ? $# : 4))
mkdir -p runs
for b in $bits; do
  for g in layer channel; do
    ./ptq --ckpt "$ckpt" --bits "$b" --act-bits 8 --granularity $g --threads 1 > runs/accept-$tag-ptq-w$b-$g.log 2>&1
    echo "$tag W$b/A8 ptq-$g: $(grep -E "^$b/8 " runs/accept-$tag-ptq-w$b-$g.log)"
  done
  for m in $methods; do
    g=layer; [ "$m" = repq-bn-channel ] && g=channel
    out=runs/accept-$tag-$m-w$b
    rm -rf "$out"
    ./train cifar10 --init "$ckpt" --epochs 3 --tmax 3 --lr 0.01 --limit-train 10000 --threads 1 --out "$out" \
      --qat "${m%-channel}" --bits "$b" --act-bits 8 --granularity $g "$@" > "$out.log" 2>&1
    echo "$tag W$b/A8 $m: $(grep -E '^done|loss is' "$out.log")"
  done
done
