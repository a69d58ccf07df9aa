#!/usr/bin/env bash
# Downloads CIFAR-10 (binary version), checks its md5 and unpacks it: DIR/cifar-10-batches-bin/ (DIR: data).
#   bash scripts/get-cifar10.sh [DIR]
# CIFAR10_URL overrides the address (a mirror, or file:// for a local copy).
set -euo pipefail
dir="${1:-data}"
url="${CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz}"
md5=c32a1d4ab5d03f1284b67883e8d87530
tgz="$dir/cifar-10-binary.tar.gz"

if [ -f "$dir/cifar-10-batches-bin/data_batch_1.bin" ]; then
  echo "get-cifar10: $dir/cifar-10-batches-bin already there"
  exit 0
fi
command -v curl >/dev/null || { echo "get-cifar10: curl not found (apt-get install curl)" >&2; exit 1; }
mkdir -p "$dir"
echo "get-cifar10: downloading $url (163 MB) to $tgz"
curl -fL --retry 3 -o "$tgz.part" "$url" || { echo "get-cifar10: download of $url failed" >&2; rm -f "$tgz.part"; exit 1; }
got=$(md5sum "$tgz.part" | cut -d' ' -f1)
if [ "$got" != "$md5" ]; then
  echo "get-cifar10: md5 of $url is $got, expected $md5; the file is removed" >&2
  rm -f "$tgz.part"
  exit 1
fi
mv "$tgz.part" "$tgz"
tar -xzf "$tgz" -C "$dir"
rm -f "$tgz"
echo "get-cifar10: CIFAR-10 is in $dir/cifar-10-batches-bin"
