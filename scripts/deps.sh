#!/usr/bin/env bash
# Installs what Weir builds against, when it is missing: the compression libraries RocksDB uses,
# clang for the bindings, cmake for the S3 store's TLS library (aws-lc-sys), and a release build
# of RocksDB itself (scripts/rocksdb.sh: compiled once per machine, about 8 minutes on two cores,
# instead of librocksdb-sys compiling its bundled copy into every checkout's target directory).
# Idempotent; seconds once installed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libzstd-dev liblz4-dev libsnappy-dev libbz2-dev zlib1g-dev clang libclang-dev cmake make g++)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages: ${missing[*]}; install the zstd, lz4, snappy, bzip2 and zlib development files, clang, cmake, make and g++ (Weir expects Debian 12 or Ubuntu)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  echo "== installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

./scripts/rocksdb.sh
