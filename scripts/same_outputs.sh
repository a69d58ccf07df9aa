#!/usr/bin/env bash
# Do two builds write the same files and print the same results? For a change that must change nothing
# for users (a redesign, a move of code): runs one fixed set of commands with each build on the same
# small real-data inputs and seeds, and compares what they wrote.
#
#   scripts/same_outputs.sh OLD_ROOT NEW_ROOT [DATA]      (KEEP=1: leave the outputs in the temporary folder)
#
# OLD_ROOT and NEW_ROOT are repository roots, each already built (`make`: ./train, ./ptq, ./export,
# ./infer, ./inspect, ./summary in the root). DATA is the CIFAR-10 folder (default
# ../shared/data/cifar-10-batches-bin). Every command runs with --threads 1 (the results of our loops do not
# depend on the thread count, oneDNN's may), in a work folder of the same name for both builds, so that
# the paths recorded in files agree.
#
# The commands: ./train in full precision (OABN) and each QAT method from it (repq-bn, repq-bnest, merged,
# bnest, cluster); ./ptq over bit widths, its int8 export, a QAT run's export and a ClusterQAT run's
# compressed export; ./export to ONNX and QDQ ONNX (full precision quantized by ./ptq's calibration, and a
# QAT run); ./infer of the int8 and the compressed files; ./inspect with histograms; ./summary --all.
#
# The runs are short (a few dozen steps): they exercise the code, not the methods (RepQ-BNEst from this
# barely trained model stops on a NaN loss at its second batch, which is compared like any other output).
#
# Compared: every file byte for byte (checkpoints, int8 and compressed files, ONNX, --json results, PNGs),
# except what records the moment: config.json's "created" and "git_commit", log.csv's seconds and
# images_per_s columns (masked), and the TensorBoard events files, whose records carry wall times (their
# (tag, step, value) records are compared instead, where python3 has tensorboard). Each command's standard
# output and error, with timings masked (seconds, img/s, ms). Prints each difference and exits 1 if any.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
DATA=$(cd "${3:-../shared/data/cifar-10-batches-bin}" && pwd)
for root in "$OLD" "$NEW"; do
  for p in train ptq export infer inspect summary; do
    [ -x "$root/$p" ] || { echo "same_outputs: $root/$p is missing: run make in $root" >&2; exit 2; }
  done
done

TMP=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then echo "same_outputs: the outputs stay in $TMP (KEEP)"; else trap 'rm -rf "$TMP"' EXIT; fi

# run BIN_ROOT: the command set, in $TMP/<old|new>/work, outputs in out/
run() {
  local B=$1 W=$2
  mkdir -p "$W/work/out"
  cd "$W/work"
  local n=0
  cmd() {  # cmd PROGRAM ARGS...: its output into out/NN-PROGRAM.txt
    n=$((n + 1))
    local name
    name=$(printf '%02d-%s' "$n" "$1")
    "$B/$1" "${@:2}" > "out/$name.txt" 2>&1 || echo "exit $?" >> "out/$name.txt"
  }
  local common=(--data "$DATA" --limit-val 256 --batch-size 64 --seed 3 --threads 1 --oabn-k 3)
  cmd train cifar10 "${common[@]}" --out runs/fp --epochs 2 --tmax 2 --limit-train 512 --lr 0.02
  for m in repq-bn repq-bnest merged bnest cluster; do
    cmd train cifar10 "${common[@]}" --out "runs/$m" --qat "$m" --bits 4 --init runs/fp/best.safetensors \
      --epochs 1 --tmax 1 --limit-train 256 --lr 0.001
  done
  local eval=(--limit-val 256 --threads 1)
  cmd ptq --ckpt runs/fp/best.safetensors --bits 8,6,4 --json out/ptq.json "${eval[@]}"
  cmd ptq --ckpt runs/fp/best.safetensors --bits 8 --granularity channel --export out/w8.int8.safetensors "${eval[@]}"
  cmd ptq --ckpt runs/repq-bn/last.safetensors --json out/repq.json --export out/repq.int8.safetensors "${eval[@]}"
  cmd ptq --ckpt runs/cluster/last.safetensors --json out/cluster.json --export out/cluster.safetensors "${eval[@]}"
  cmd export --ckpt runs/fp/best.safetensors --onnx out/fp.onnx
  cmd export --ckpt runs/fp/best.safetensors --onnx out/fp_qdq.onnx --qdq --bits 8 --threads 1
  cmd export --ckpt runs/repq-bn/last.safetensors --onnx out/repq_qdq.onnx --qdq
  cmd infer --model out/w8.int8.safetensors "${eval[@]}"
  cmd infer --model out/cluster.safetensors --data "$DATA" "${eval[@]}"  # a compressed file records no data folder
  cmd inspect --ckpt runs/fp/best.safetensors --hist out/hist --threads 1
  cmd summary --all
  # what records the moment, masked
  for f in $(find . -name config.json); do
    sed -E -i 's/"(created|git_commit)": "[^"]*"/"\1": "-"/' "$f"
  done
  for f in $(find . -name log.csv); do
    awk -F, 'BEGIN { OFS = "," } NR == 1 { for (i = 1; i <= NF; i++) if ($i == "seconds" || $i == "images_per_s") m[i] = 1 }
             { for (i in m) if (NR > 1) $i = "-"; print }' "$f" > "$f.masked" && mv "$f.masked" "$f"
  done
  for f in out/*.txt; do
    sed -E -i 's/[0-9]+(\.[0-9]+)? ?(s|ms|img\/s|ms\/img)\b/<time>/g; s/ETA [0-9:]+/ETA <time>/g' "$f"
  done
  for f in $(find . -name 'events.out.tfevents.*'); do
    if python3 -c 'import tensorboard' 2>/dev/null; then
      python3 - "$f" > "$(dirname "$f")/events.records" <<'EOF'
import sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
for e in EventFileLoader(sys.argv[1]).Load():
    for v in e.summary.value:
        print(e.step, v.tag, v.simple_value if v.HasField('simple_value') else v.tensor.float_val)
EOF
    fi
    rm "$f"
  done
}

(run "$OLD" "$TMP/old")
(run "$NEW" "$TMP/new")

cd "$TMP"
differ=0
while IFS= read -r f; do
  if [ ! -e "new/$f" ]; then echo "only in the old build's output: $f"; differ=1
  elif ! cmp -s "old/$f" "new/$f"; then
    echo "differs: $f"
    case "$f" in *.txt | *.json | *.csv | *.records) { diff "old/$f" "new/$f" || true; } | head -n 8 ;; esac
    differ=1
  fi
done < <(cd old && find . -type f | sort)
while IFS= read -r f; do
  [ -e "old/$f" ] || { echo "only in the new build's output: $f"; differ=1; }
done < <(cd new && find . -type f | sort)
files=$(cd old && find . -type f | wc -l)
if [ "$differ" -eq 0 ]; then
  echo "same_outputs: the $files files and outputs of both builds are the same"
else
  echo "same_outputs: the builds differ (above)"
fi
exit "$differ"
