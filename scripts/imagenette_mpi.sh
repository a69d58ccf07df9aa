#!/usr/bin/env bash
# #15's ImageNet run (docs/distributed.md): repvgg-a0 at 224x224 trained from scratch on imagenette
# (1,000 train, 500 val images) by 2 processes of 1 thread each under mpirun, then ./ptq at 8 and 6 bits,
# per layer and per channel. About 40 minutes on an idle 2-core machine.
# usage: scripts/imagenette_mpi.sh [RUN DIR]   (default runs/imagenette-a0-mpi2)
set -euo pipefail
out=${1:-runs/imagenette-a0-mpi2}
data=${DATA:-../shared/data/imagenette}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --bind-to none ./train imagenet --data "$data" --arch repvgg-a0 --batch-size 64 --lr 0.05 --warmup 3 \
  --sched cosine --epochs 50 --label-smoothing 0.1 --threads 1 --seed 0 --out "$out"
for g in layer channel; do
  ./ptq --ckpt "$out/best.safetensors" --bits 8,6 --granularity $g --threads 1 --batch-size 32 --calib-batches 8
done
