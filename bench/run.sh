#!/usr/bin/env bash
# `make bench`: our speed against PyTorch's on this machine, one line per case:
#   bench CASE ours=X torch=Y ratio=X/Y torch_cl=Z unit=img/s gflops=G allocs=0 primitives=0 isa=I convs=C vs_best=X/max(Y,Z)
# isa= is the instruction set oneDNN dispatched to (ONEDNN_MAX_CPU_ISA=AVX2 caps it), convs= every oneDNN
# convolution implementation the case made (a "ref:any" there is oneDNN's slow reference kernel).
# torch= is PyTorch in its default NCHW layout, torch_cl= with model and input in channels_last
# (torch_peer.py times both, one call each per rep); vs_best= is ours against the faster of the two, which
# this script appends (the ceiling and data lines have no torch_cl).
# Ours and torch run in the same invocation, alternating one call at a time (bench/model_bench.cpp), and
# each is the median of the timed calls: the ratio holds on a shared machine whose load changes; the bare
# rates do not. Without PyTorch the line says torch=absent.
#
#   BENCH_CASES="train-cifar infer-cifar-deploy" make bench   a subset (default: all, in the order below;
#                                                               gpu-CASE: the case on the GPU, torch on CUDA)
#   BENCH_REPS=3 BENCH_WARMUP=2 make bench                     timed and untimed calls per case (default:
#                                                               per case, below; BENCH_QUICK=1: 3 and 2)
#   BENCH_THREADS=2 (default 2), BENCH_PYTHON=/usr/bin/python3, BENCH_DATA=../shared/data
#
# OpenMP waiting: both sides use libgomp (PyTorch's oneDNN is the same libdnnl 2.6). By default a libgomp
# thread that waits spins (GOMP_SPINCOUNT 300000 pauses, some milliseconds) before it sleeps; on a shared
# 2-core machine that burns the cores the working threads need, and both sides' times swing by 2x with
# the load. Unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set already, this script sets
# OMP_WAIT_POLICY=passive for both (the child PyTorch process inherits it): the same for both, and steadier.
#
# gflops: ours' achieved rate, 2 x MACs per image (models::model_size, the form that runs) x 3 for a
# training step (forward, backward-data, backward-weights) x img/s. The ceiling line is the machine's FP32
# rate for a large 3x3 convolution [32,256,56,56] -> 256 (oneDNN in its blocked layout; torch's F.conv2d).
# allocs / primitives: system allocations and oneDNN primitives created during the timed calls (0: a
# steady state). data-* lines: the input pipelines alone (bench/data_bench.cpp), 1 thread and all threads.
set -u
cd "$(dirname "$0")/.."

MODELS="ceiling train-cifar train-cifar-oabn infer-cifar-deploy train-a0 infer-a0-deploy"
# QAT training steps, 4 bits (RepQ Table 4: their times relative to train-cifar's); CPU only
QAT="train-cifar-bnest train-cifar-merged-qat train-cifar-repq-bn train-cifar-repq-bnest train-cifar-cluster"
# integer inference (quant/int8_runtime.h) against PyTorch's int8 path and our FP32 forward; CPU only
INT8="infer-cifar-int8 infer-a0-int8 infer-a0-int8-b1 infer-cifar-int8-a7 infer-a0-int8-a7"
# the GPU lines: the same cases with model and data on the GPU; "skipped: REASON" without one
ALL="$MODELS $QAT $INT8 data-cifar data-imagenet $(for c in $MODELS; do printf 'gpu-%s ' "$c"; done)"
CASES=${BENCH_CASES:-$ALL}
THREADS=${BENCH_THREADS:-2}
PYTHON=${BENCH_PYTHON:-/usr/bin/python3}
DATA=${BENCH_DATA:-../shared/data}
QUICK=${BENCH_QUICK:-0}
if [ -z "${OMP_WAIT_POLICY:-}" ] && [ -z "${GOMP_SPINCOUNT:-}" ]; then export OMP_WAIT_POLICY=passive; fi

# default timed calls per case (A0 training is some seconds a step: few reps)
reps_for() {
  case $1 in
    gpu-*) echo 20 ;;
    train-a0) echo 3 ;;
    infer-a0-deploy | infer-a0-int8 | infer-a0-int8-a7) echo 5 ;;
    infer-a0-int8-b1) echo 21 ;;
    *) echo 7 ;;
  esac
}

echo "bench machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg), threads=$THREADS," \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-default} (both sides)"
if torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  echo "bench peer: PyTorch $torch_version ($PYTHON), same threads, shapes and synthetic data"
else
  echo "bench peer: PyTorch absent ($PYTHON cannot import torch): torch=absent"
fi
echo "bench gflops: 2 x MACs/img (training form for train-*, deploy form for infer-*) x 3 for a training step"

# appends vs_best=ours/max(torch, torch_cl) to a line with both
vs_best() {
  awk '{ o = t = c = ""
         for (i = 1; i <= NF; i++) {
           if ($i ~ /^ours=/) o = substr($i, 6); if ($i ~ /^torch=/) t = substr($i, 7)
           if ($i ~ /^torch_cl=/) c = substr($i, 10) }
         if (o != "" && t != "" && c != "" && t != "absent") printf "%s vs_best=%.2f\n", $0, o / (t + 0 > c + 0 ? t : c)
         else print }'
}

data_done=0
status=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for c in $CASES; do
  case $c in
    data-cifar | data-imagenet | data-imagenet-eval)
      # one run of data_bench prints every pipeline, at 1 thread and at all threads
      if [ $data_done = 0 ]; then
        build/bench/data_bench "$DATA" | tee -a "$out" || status=1
        data_done=1
      fi
      ;;
    *)
      reps=${BENCH_REPS:-$(reps_for "$c")}
      warmup=${BENCH_WARMUP:-2}
      if [ "$QUICK" = 1 ]; then reps=${BENCH_REPS:-3}; fi
      build/bench/model_bench --case "$c" --threads "$THREADS" --reps "$reps" --warmup "$warmup" \
        --python "$PYTHON" | vs_best | tee -a "$out" || status=1
      ;;
  esac
done

# Data pipelines against the model that consumes them: one loader thread's rate over the model's.
awk '
  / ours=/ { for (i = 1; i <= NF; i++) if ($i ~ /^ours=/) v = substr($i, 6) + 0
             if ($2 ~ /^data-/) { if ($0 ~ /threads=1$/) data[$2] = v } else model[$2] = v }
  END {
    n = split("data-cifar:train-cifar data-cifar:infer-cifar-deploy data-imagenet:train-a0 data-imagenet-eval:infer-a0-deploy", pairs, " ")
    for (k = 1; k <= n; k++) {
      split(pairs[k], p, ":")
      if ((p[1] in data) && (p[2] in model) && model[p[2]] > 0)
        printf "bench check %s threads=1 / %s = %.1fx (the pipeline %s)\n", p[1], p[2], data[p[1]] / model[p[2]],
               (data[p[1]] >= model[p[2]] ? "keeps up" : "IS THE BOTTLENECK")
    }
  }' "$out"
exit $status
