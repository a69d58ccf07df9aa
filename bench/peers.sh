#!/usr/bin/env bash
# `make bench-peers`: the peers users pick today (PyPI's torch 2 with torch.compile, onnxruntime, OpenVINO,
# and onnx, numpy for them) in a virtual environment, build/peers-venv, made once; later runs install only
# what is missing, then print each peer's version. `make bench` uses it when it is there (bench/run.sh).
# Never a dependency of the engine or of `make test`. PyPI's torch wheel is the CUDA build (some GB); the
# bench runs it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/peers-venv
modules=(torch onnxruntime openvino onnx numpy)

# Debian's python (3.11, the one the engine's scripts use): its venv module needs python3-venv
bash scripts/install-deps.sh bench-peers
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
missing=()
for m in "${modules[@]}"; do
  "$venv/bin/python" -c "import $m" 2>/dev/null || missing+=("$m")
done
if [ ${#missing[@]} -ne 0 ]; then
  echo "bench-peers: pip install ${missing[*]} into $venv"
  "$venv/bin/python" -m pip install -q "${missing[@]}"
fi
"$venv/bin/python" bench/torch_peer.py --versions
