#!/usr/bin/env bash
# Installs the Debian packages the engine needs, only those missing, then the interop tests' PyPI
# packages. Run by `make test` and `make bench`; `install-deps.sh build` (run by `make`) the Debian
# packages alone; `install-deps.sh fuzz` (run by `make fuzz`) installs
# clang, its libFuzzer and sanitizer runtimes and its OpenMP instead; `install-deps.sh bench-peers` (run by
# `make bench-peers`) only python3-venv, which bench/peers.sh needs for the peers' virtual environment.
set -euo pipefail
# libjpeg62-turbo-dev and libpng-dev decode the images (datasets/decode.cpp); libstb-dev's stb_image_write
# writes PNGs and JPEGs (./inspect --hist, the tests, the fuzz seeds).
# python3-torch (with python3-numpy): the PyTorch 1.13 oracle of the reference scripts, the benchmark's
# peer and the official-checkpoint converter; python3-pip for the PyPI packages below; Open MPI for
# data-parallel training (mpirun -np N ./train) and its tests.
pkgs=(g++ make libdnnl-dev doctest-dev libfmt-dev libjpeg62-turbo-dev libpng-dev libstb-dev nlohmann-json3-dev curl
      python3-torch python3-numpy python3-pip libopenmpi-dev openmpi-bin)
[ "${1:-}" = fuzz ] && pkgs=(clang libclang-rt-dev libomp-dev make libdnnl-dev libfmt-dev libjpeg62-turbo-dev libpng-dev
                            libstb-dev nlohmann-json3-dev)
[ "${1:-}" = bench-peers ] && pkgs=(python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: not root; run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

[ "${1:-}" = fuzz ] || [ "${1:-}" = build ] || [ "${1:-}" = bench-peers ] && exit 0

# The interop tests' Python side (ONNX checker and runtime, TensorBoard's event reader), for Debian's
# /usr/bin/python3 (the one with python3-torch). Optional: without them those tests report SKIPPED.
py_missing=()
for m in onnx onnxruntime tensorboard; do
  /usr/bin/python3 -c "import $m" 2>/dev/null || py_missing+=("$m")
done
if [ ${#py_missing[@]} -ne 0 ]; then
  echo "install-deps: pip install ${py_missing[*]} for /usr/bin/python3 (the tests that need them are SKIPPED if this fails)"
  # numpy<2: python3-torch 1.13 is built against numpy 1.x; this keeps pip from upgrading Debian's.
  /usr/bin/python3 -m pip install -q --break-system-packages "${py_missing[@]}" "numpy<2" ||
    echo "install-deps: pip could not install ${py_missing[*]}; continuing" >&2
fi
