#!/usr/bin/env bash
# `make bench`: our speed against the peers' on this machine, one line per case:
#   bench CASE ours=X torch=.. torch_cl=.. compile=.. compile_cl=.. ort=.. ov=.. vs_best=X/fastest best=NAME
#         unit=img/s gflops=G allocs=0 primitives=0 isa=I convs=C
# The peers (bench/torch_peer.py): torch= PyTorch in its default NCHW layout, torch_cl= with model and input in
# channels_last, compile= and compile_cl= the same under torch.compile, ort= onnxruntime and ov= OpenVINO
# running the ONNX file of our own model (the deploy graph ./export writes; its QDQ form for the int8 cases).
# "-": the peer does not apply to the case; "absent": its package is not installed; "failed:REASON": it
# raised. vs_best= is ours over the fastest peer (best=). isa= is the instruction set oneDNN dispatched to,
# convs= every oneDNN convolution implementation the case made (a "ref:any" there is oneDNN's slow
# reference kernel).
# The peers come from build/peers-venv when it exists (`make bench-peers` makes it: PyPI's torch 2,
# onnxruntime, OpenVINO); without it from Debian's /usr/bin/python3 (PyTorch 1.13, no torch.compile).
# Ours and the peers (each in its own process) run in the same invocation, alternating one call at a time
# (bench/model_bench.cpp), and
# each is the median of the timed calls: the ratios hold on a shared machine whose load changes; the bare
# rates do not.
#
# Both ISA families: on a CPU with AVX-512 each CPU model case runs twice, natively and then with oneDNN
# capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 for ours, torch's oneDNN and OpenVINO's CPU plugin, which is built
# on oneDNN: its runtime model then says brgconv_avx2_f32, not brgconv_avx512_f32; ATEN_CPU_CAPABILITY=avx2
# for torch's own kernels and torch.compile's code); that line ends in "cap=AVX2 uncapped=ort": onnxruntime
# picks its kernels (MLAS) by CPUID and has no such switch, so it still runs AVX-512 there.
#
#   BENCH_CASES="train-cifar infer-cifar-deploy" make bench   a subset (default: all, in the order below;
#                                                               gpu-CASE: the case on the GPU, torch on CUDA)
#   BENCH_REPS=3 BENCH_WARMUP=2 make bench                     timed and untimed calls per case (default:
#                                                               per case, below; BENCH_QUICK=1: 3 and 2)
#   BENCH_THREADS=2 (default 2), BENCH_PYTHON=/usr/bin/python3 (default: the venv's, else that),
#   BENCH_DATA=../shared/data, BENCH_ISA="native" (default "native avx2" on an AVX-512 CPU, else "native")
#
# OpenMP waiting: ours and PyTorch use libgomp (Debian's PyTorch even the same libdnnl 2.6; PyPI's bundles
# its own libgomp and oneDNN). By default a libgomp
# thread that waits spins (GOMP_SPINCOUNT 300000 pauses, some milliseconds) before it sleeps; on a shared
# 2-core machine that burns the cores the working threads need, and both sides' times swing by 2x with
# the load. Unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set already, this script sets
# OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=1000 for both (the child PyTorch process inherits it): a waiting
# thread spins 1000 pauses (microseconds, 300x shorter than the default) and then sleeps. The same for both,
# and steadier; with no spin at all (passive alone) every parallel region ended in a sleep and began with a
# wake-up, which cost ours 1.8 ms of a 13.5 ms batch-1 A0 forward (docs/performance.md). Under passive
# onnxruntime's intra-op threads do not spin at all (bench/onnx_peer.py): its spin has no short setting, and
# left on it took the cores from whichever side ran next (ours 27 ms at batch 1, OpenVINO 0.6x its rate).
#
# gflops: ours' achieved rate, 2 x MACs per image (models::model_size, the form that runs) x 3 for a
# training step (forward, backward-data, backward-weights) x img/s. The ceiling line is the machine's FP32
# rate for a large 3x3 convolution [32,256,56,56] -> 256 (oneDNN in its blocked layout; torch's F.conv2d).
# allocs / primitives: system allocations and oneDNN primitives created during the timed calls (0: a
# steady state). data-* lines: the input pipelines alone (bench/data_bench.cpp), 1 thread and all threads.
set -u
cd "$(dirname "$0")/.."

MODELS="ceiling train-cifar train-cifar-oabn infer-cifar-deploy train-a0 infer-a0-deploy infer-a0-deploy-b1 infer-resnet18-deploy"
# QAT training steps, 4 bits (RepQ Table 4: their times relative to train-cifar's; the last, RepQ-BN of
# acb-cifar, ACNet's blocks); CPU only
QAT="train-cifar-bnest train-cifar-merged-qat train-cifar-repq-bn train-cifar-repq-bnest train-cifar-cluster train-cifar-acb-repq-bn"
# integer inference (quant/int8_runtime.h) against PyTorch's int8 path, onnxruntime and OpenVINO on our QDQ
# export, and our FP32 forward; CPU only
INT8="infer-cifar-int8 infer-a0-int8 infer-a0-int8-b1 infer-cifar-int8-a7 infer-a0-int8-a7"
# the GPU lines: the same cases with model and data on the GPU; "skipped: REASON" without one
ALL="$MODELS $QAT $INT8 data-cifar data-imagenet $(for c in $MODELS; do printf 'gpu-%s ' "$c"; done)"
CASES=${BENCH_CASES:-$ALL}
THREADS=${BENCH_THREADS:-2}
VENV_PYTHON=build/peers-venv/bin/python
if [ -x "$VENV_PYTHON" ]; then PYTHON=${BENCH_PYTHON:-$VENV_PYTHON}; else PYTHON=${BENCH_PYTHON:-/usr/bin/python3}; fi
if grep -qw avx512f /proc/cpuinfo; then ISAS=${BENCH_ISA:-native avx2}; else ISAS=${BENCH_ISA:-native}; fi
DATA=${BENCH_DATA:-../shared/data}
QUICK=${BENCH_QUICK:-0}
if [ -z "${OMP_WAIT_POLICY:-}" ] && [ -z "${GOMP_SPINCOUNT:-}" ]; then export OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=1000; fi

# default timed calls per case (A0 training is some seconds a step: few reps)
reps_for() {
  case $1 in
    gpu-*) echo 20 ;;
    train-a0) echo 3 ;;
    infer-a0-deploy | infer-a0-int8 | infer-a0-int8-a7 | infer-resnet18-deploy) echo 5 ;;
    infer-a0-int8-b1 | infer-a0-deploy-b1) echo 21 ;;
    *) echo 7 ;;
  esac
}

echo "bench machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg), threads=$THREADS," \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-default} (both sides)"
if [ "$PYTHON" = "$VENV_PYTHON" ]; then
  echo "bench peers: from $VENV_PYTHON (make bench-peers)"
elif [ ! -x "$VENV_PYTHON" ]; then
  echo "bench peers: $VENV_PYTHON absent (make bench-peers makes it): the modern peers (torch 2, torch.compile," \
       "OpenVINO) are absent; peers from $PYTHON"
fi
if versions=$("$PYTHON" bench/torch_peer.py --versions 2>/dev/null); then
  echo "bench peers: $versions ($PYTHON), same threads, shapes and synthetic data"
else
  echo "bench peers: $PYTHON cannot run bench/torch_peer.py: torch=absent"
fi
echo "bench ISA: $ISAS$(case $ISAS in *avx2*) echo " (avx2: ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2; onnxruntime not capped)" ;; esac)"
echo "bench gflops: 2 x MACs/img (training form for train-*, deploy form for infer-*) x 3 for a training step"

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
      for isa in $ISAS; do
        case $isa:$c in
          native:* ) build/bench/model_bench --case "$c" --threads "$THREADS" --reps "$reps" --warmup "$warmup" \
                       --python "$PYTHON" | tee -a "$out" || status=1 ;;
          avx2:gpu-*) ;;  # the cap is for the CPU
          avx2:*) ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 build/bench/model_bench --case "$c" --threads "$THREADS" \
                    --reps "$reps" --warmup "$warmup" --python "$PYTHON" | sed 's/$/ cap=AVX2 uncapped=ort/' | tee -a "$out" || status=1 ;;
          *) echo "bench: unknown BENCH_ISA '$isa' (native, avx2)" >&2; status=1 ;;
        esac
      done
  esac
done

# Data pipelines against the model that consumes them: one loader thread's rate over the model's.
awk '
  / ours=/ { for (i = 1; i <= NF; i++) if ($i ~ /^ours=/) v = substr($i, 6) + 0
             if ($2 ~ /^data-/) { if ($0 ~ /threads=1$/) data[$2] = v } else if (!($2 in model)) model[$2] = v }
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
