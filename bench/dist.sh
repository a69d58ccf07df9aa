#!/usr/bin/env bash
# `make bench-dist`: data-parallel speed of ./train on CIFAR-10 at the same global batch in three set-ups:
#   one1   1 process, 1 thread
#   one2   1 process, 2 threads
#   mpi2   mpirun -np 2, 1 thread each (each process half of every batch)
#   pair   two independent processes at once, 1 thread each, each on half the batch and half the images, no
#          communication: what the machine allows mpi2 (two cores share the caches and the memory bus), so
#          mpi2/pair is the data-parallel code's own efficiency
# Each run is two short epochs, timed on the second (log.csv's images_per_s: the steps alone, evaluation
# excluded; the first epoch makes the primitives and buffers, a fixed cost that would weigh more on the
# faster set-up). The three run in turn, DIST_ROUNDS times (default 3): the machine's speed drifts over
# minutes (it is shared), so each round's ratios compare runs a minute apart, and the last line gives the
# median over the rounds. Also mpi2's all-reduce line of the last round (time per step from the first
# bucket's start to the end of the wait, the part of it waited after the backward, the share overlapped).
#   DIST_IMAGES=3840 (training images: 30 steps of 128), DIST_BATCH=128, DIST_BIND=none (mpirun --bind-to),
#   BENCH_DATA=../shared/data
set -eu
cd "$(dirname "$0")/.."
DATA=${BENCH_DATA:-../shared/data}/cifar-10-batches-bin
IMAGES=${DIST_IMAGES:-3840}
BATCH=${DIST_BATCH:-128}
ROUNDS=${DIST_ROUNDS:-3}
command -v mpirun >/dev/null || { echo "bench-dist: skipped: no mpirun (install openmpi-bin)"; exit 0; }
[ -d "$DATA" ] || { echo "bench-dist: skipped: no CIFAR-10 in $DATA"; exit 0; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
opts() { echo "cifar10 --data $DATA --epochs 2 --batch-size $1 --limit-train $2 --limit-val 100 --seed 0"; }
full=$(opts "$BATCH" "$IMAGES") half=$(opts $((BATCH / 2)) $((IMAGES / 2)))
rate() {  # name, train options, then the command: its img/s (a failure's log on stderr: this runs in $(...))
  local name=$1 args=$2; shift 2
  rm -rf "$out/$name"
  "$@" $args --out "$out/$name" >"$out/$name.log" 2>&1 || { echo "bench-dist: $name failed:" >&2; cat "$out/$name.log" >&2; exit 1; }
  tail -1 "$out/$name/log.csv" | awk -F, '{print $NF}'
}
pair() {  # the sum of the two processes' img/s
  rate pa "$half" ./train --threads 1 >"$out/pa.rate" &
  local p=$! b
  b=$(rate pb "$half" ./train --threads 1)
  wait $p
  echo "$(cat "$out/pa.rate") + $b" | bc
}
median() { tr ' ' '\n' | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
r1="" r2="" r3=""
for r in $(seq "$ROUNDS"); do
  one1=$(rate one1 "$full" ./train --threads 1)
  one2=$(rate one2 "$full" ./train --threads 2)
  mpi2=$(rate mpi2 "$full" mpirun -np 2 --bind-to "${DIST_BIND:-none}" --mca btl self,vader ./train --threads 1)
  two=$(pair)
  a=$(echo "scale=2; $mpi2 / $one1" | bc) b=$(echo "scale=2; $mpi2 / $one2" | bc) c=$(echo "scale=2; $mpi2 / $two" | bc)
  r1="$r1 $a" r2="$r2 $b" r3="$r3 $c"
  echo "bench-dist round=$r images=$IMAGES batch=$BATCH one1=$one1 one2=$one2 mpi2=$mpi2 pair=$two unit=img/s" \
       "mpi2/one1=$a mpi2/one2=$b pair/one1=$(echo "scale=2; $two / $one1" | bc) mpi2/pair=$c"
done
grep '^all-reduce' "$out/mpi2.log" | tail -1 | sed 's/^/bench-dist mpi2 /'
echo "bench-dist median over $ROUNDS rounds: mpi2/one1=$(echo $r1 | median) mpi2/one2=$(echo $r2 | median) mpi2/pair=$(echo $r3 | median)"
