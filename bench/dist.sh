#!/usr/bin/env bash
# `make bench-dist`: data-parallel speed of ./train on CIFAR-10, one short epoch at the same global batch
# in three set-ups, run one after the other:
#   one1   1 process, 1 thread
#   one2   1 process, 2 threads
#   mpi2   mpirun -np 2, 1 thread each (each process half of every batch)
# Prints each one's training throughput (log.csv's images_per_s: the steps alone, evaluation excluded),
# mpi2's ratios to the other two, and mpi2's all-reduce line (time per step from the first bucket's start
# to the end of the wait, the part of it waited after the backward, the share that overlapped it).
#   DIST_IMAGES=3840 (training images: 30 steps of 128), DIST_BATCH=128, BENCH_DATA=../shared/data
# On a machine shared with other jobs the bare rates swing with their load; so do the ratios, a little
# less (the set-ups run in turn, not interleaved).
set -eu
cd "$(dirname "$0")/.."
DATA=${BENCH_DATA:-../shared/data}/cifar-10-batches-bin
IMAGES=${DIST_IMAGES:-3840}
BATCH=${DIST_BATCH:-128}
command -v mpirun >/dev/null || { echo "bench-dist: skipped: no mpirun (install openmpi-bin)"; exit 0; }
[ -d "$DATA" ] || { echo "bench-dist: skipped: no CIFAR-10 in $DATA"; exit 0; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args="cifar10 --data $DATA --epochs 1 --batch-size $BATCH --limit-train $IMAGES --limit-val 100 --seed 0"
rate() {  # name, then the command: its img/s
  local name=$1; shift
  "$@" $args --out "$out/$name" >"$out/$name.log" 2>&1 || { echo "bench-dist: $name failed:"; cat "$out/$name.log"; exit 1; }
  tail -1 "$out/$name/log.csv" | awk -F, '{print $NF}'
}
one1=$(rate one1 ./train --threads 1)
one2=$(rate one2 ./train --threads 2)
mpi2=$(rate mpi2 mpirun -np 2 --bind-to none --mca btl self,vader ./train --threads 1)
echo "bench-dist images=$IMAGES batch=$BATCH one1=$one1 one2=$one2 mpi2=$mpi2 unit=img/s" \
     "mpi2/one1=$(echo "scale=2; $mpi2 / $one1" | bc) mpi2/one2=$(echo "scale=2; $mpi2 / $one2" | bc)"
grep '^all-reduce' "$out/mpi2.log" | sed 's/^/bench-dist mpi2 /'
