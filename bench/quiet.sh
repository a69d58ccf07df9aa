#!/usr/bin/env bash
# The run behind docs/performance.md's table of the modern peers (issue 24): a subset of `make bench`, each
# case natively and capped at AVX2, against torch 2 (eager, channels_last, torch.compile), onnxruntime and
# OpenVINO. Run it on a quiet machine (pause other jobs first): about 20 minutes on 2 cores. Writes the
# bench lines to build/bench_quiet.log, then prints them as the markdown table the docs take.
set -euo pipefail
cd "$(dirname "$0")/.."
make -j1 all build/bench/model_bench
[ -x build/peers-venv/bin/python ] || make bench-peers
BENCH_CASES="ceiling train-cifar train-cifar-repq-bn infer-cifar-deploy infer-a0-deploy infer-a0-deploy-b1 infer-cifar-int8" \
  bash bench/run.sh 2>&1 | grep --line-buffered -v '^W[0-9]' | tee build/bench_quiet.log ||
  echo "bench/quiet.sh: a case failed (above); the table has the rest"

# One row per case and ISA. target: issue 24's (training >= 1.5x the best torch 2 setting; FP32 inference
# >= 1.2x the best of onnxruntime, OpenVINO and torch.compile; int8 >= 1.5x the best peer on our QDQ
# model); vs_best is over every peer, so it is at least as strict. of ceiling: ours' gflops over ours'
# rate on the FP32 ceiling convolution at the same ISA (Winograd counts as direct, so deploy forwards can
# pass 100%; none for int8).
echo
echo "| case | ISA | ours | torch | torch_cl | compile | compile_cl | ort | ov | vs_best (best) | target | met | of ceiling |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
awk '$1 == "bench" && / ours=/ {
  delete f
  for (i = 3; i <= NF; i++) { k = index($i, "="); if (k) f[substr($i, 1, k - 1)] = substr($i, k + 1) }
  isa = f["isa"] (("cap" in f) ? " (cap; ort uncapped)" : "")
  if ($2 == "ceiling") { ceiling[f["isa"]] = f["ours"]; next }
  target = $2 ~ /^train/ ? 1.5 : ($2 ~ /int8/ ? 1.5 : 1.2)
  met = ("vs_best" in f) ? (f["vs_best"] + 0 >= target ? "yes" : "no") : "?"
  of = $2 ~ /int8/ ? "-" : (f["isa"] in ceiling) ? sprintf("%.0f%%", 100 * f["gflops"] / ceiling[f["isa"]]) : "?"
  printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) | %.1fx | %s | %s |\n", $2, isa, f["ours"], f["torch"],
         f["torch_cl"], f["compile"], f["compile_cl"], f["ort"], f["ov"], f["vs_best"], f["best"], target, met, of
}' build/bench_quiet.log
