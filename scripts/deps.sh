#!/usr/bin/env bash
# Installs the system packages Weir builds against, when they are missing: Debian's RocksDB 7.8
# (the rocksdb state backend links it instead of compiling a bundled copy for 15-20 minutes),
# its compression libraries, clang for the bindings, and cmake for the S3 store's TLS library
# (aws-lc-sys). Idempotent; a no-op once installed.
set -euo pipefail

packages=(librocksdb-dev libzstd-dev liblz4-dev libsnappy-dev libbz2-dev zlib1g-dev clang libclang-dev cmake)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${missing[*]}; install RocksDB 7.x development files and clang (Weir expects Debian 12 or Ubuntu)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
