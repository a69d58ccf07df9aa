#!/usr/bin/env bash
# Nothing leaks, nothing grows (docs/hardening.md): the resident memory (VmRSS) of
#   1. ./train on real CIFAR-10 for 30 epochs (EPOCHS), evaluation and a checkpoint every epoch, interrupted
#      with SIGINT after epoch 15 and resumed to the end (two processes, each measured);
#   2. ./infer of an int8 export for 10,000 batches (of one image each, the validation set's first 10,000);
# sampled every 0.2 s and at each epoch's end. Prints, for each process, the RSS after its warm-up (epoch 2,
# or the infer's first 500 batches) and the largest later one, and fails when the growth is over 2%.
#
#   scripts/soak.sh [DATA] [WORK]    DATA: the CIFAR-10 folder (default ../shared/data/cifar-10-batches-bin);
#                                    WORK: a scratch folder (default a temporary one); the programs: ./train,
#                                    ./ptq, ./infer in the repository root (make)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "${1:-$ROOT/../shared/data/cifar-10-batches-bin}" && pwd)
WORK=${2:-$(mktemp -d)}
EPOCHS=${EPOCHS:-30}
HALF=$((EPOCHS / 2))
mkdir -p "$WORK"
cd "$WORK"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }  # kB

# watch PID LOG: one line "epochs_done rss_kB" per sample, to LOG, until PID ends
watch() {
  local pid=$1 log=$2
  : > "$log"
  while kill -0 "$pid" 2>/dev/null; do
    local done=0
    [ -f run/log.csv ] && done=$(($(wc -l < run/log.csv) - 1))
    echo "$done $(rss "$pid")" >> "$log"
    sleep 0.2
  done
}

# growth LOG WARMUP NAME: the RSS after the first sample with epochs_done >= WARMUP, the largest after it
growth() {
  awk -v w="$2" -v name="$3" '$1 >= w && $2 > 0 { if (!base) base = $2; if ($2 > top) top = $2; last = $2 }
    END { if (!base) { print name ": no sample after the warm-up"; exit 1 }
          g = 100 * (top - base) / base
          printf "%s: RSS %.1f MB after the warm-up, at most %.1f MB later (%+.2f%%), %.1f MB at the end\n", name, base / 1024, top / 1024, g, last / 1024
          exit (g > 2) }' "$1"
}

common=(cifar10 --data "$DATA" --limit-train 1024 --limit-val 256 --batch-size 64 --threads 1 --seed 1 --out run
        --epochs "$EPOCHS" --tmax "$EPOCHS")
"$ROOT/train" "${common[@]}" > train1.log 2>&1 &
pid=$!
watch "$pid" rss1.log &
w=$!
while kill -0 "$pid" 2>/dev/null; do
  [ -f run/log.csv ] && [ $(($(wc -l < run/log.csv) - 1)) -ge "$HALF" ] && { kill -INT "$pid"; break; }
  sleep 0.2
done
wait "$pid" || true  # 130: interrupted, the checkpoint written
wait "$w"
"$ROOT/train" --resume run > train2.log 2>&1 &
pid=$!
watch "$pid" rss2.log &
w=$!
wait "$pid"
wait "$w"
status=0
growth rss1.log 2 "train, epochs 1-$HALF" || status=1
growth rss2.log $((HALF + 2)) "train resumed, epochs $((HALF + 1))-$EPOCHS" || status=1

"$ROOT/ptq" --ckpt run/last.safetensors --bits 8 --export model.int8.safetensors --limit-val 512 > ptq.log 2>&1
"$ROOT/infer" --model model.int8.safetensors --data "$DATA" --batch-size 1 --limit-val 10000 --threads 1 > infer.log 2>&1 &
pid=$!
start=$(date +%s.%N)
: > rss3.log
while kill -0 "$pid" 2>/dev/null; do
  # seconds since the start as the "epoch" column: the warm-up is the first 2 s
  echo "$(echo "$(date +%s.%N) - $start" | bc | cut -d. -f1) $(rss "$pid")" >> rss3.log
  sleep 0.2
done
wait "$pid"
grep -E "^integer inference" infer.log
growth rss3.log 2 "infer, 10,000 batches of 1" || status=1
echo "soak: $( [ $status -eq 0 ] && echo passed || echo FAILED) (logs in $WORK)"
exit $status
