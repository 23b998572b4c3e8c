#!/usr/bin/env bash
# Builds the RocksDB the rocksdb state backend links, once per machine: a static library of
# RocksDB 7.9.2, the version whose C API the `librocksdb-sys` crate's bindings were generated
# from, taken from that crate's own download (cargo checked it against Cargo.lock's checksum),
# compiled as a release build (NDEBUG) and installed into the directory .cargo/config.toml names
# as ROCKSDB_LIB_DIR. Does nothing when ROCKSDB_LIB_DIR is set in the environment: that build
# links the RocksDB it names.
#
# Why not Debian's librocksdb-dev: it is built without NDEBUG (assertions and test sync points
# live in every read and write) and, as a shared library, reaches its thread-locals through
# __tls_get_addr on every call; this build read a canonical savepoint's rows about twice as fast
# and loaded new keys a third faster (docs/benchmarks.md, "A release build of RocksDB").
# Why not librocksdb-sys's bundled build: it compiles into each checkout's target directory
# (15-23 minutes, every clean clone); this took 7 min 48 s on two cores, once per machine.
#
# Usage: scripts/rocksdb.sh [--print-dir]; --print-dir prints where the library is (for a job
# crate built outside the workspace, docs/write-your-own-job.md). Idempotent: a no-op once
# installed. Needs the compression libraries' and a C++ compiler's packages (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The RocksDB version is the one the locked librocksdb-sys carries (its version's build metadata).
crate_version=$(sed -n '/^name = "librocksdb-sys"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)
version=${crate_version#*+}
crate=librocksdb-sys-$crate_version
# The directory's name ends in the recipe's revision (-rN): raise it in .cargo/config.toml when
# the build flags below change, so every machine builds the library again.
dir=$(sed -n 's/^ROCKSDB_LIB_DIR *= *"\(.*\)"/\1/p' .cargo/config.toml)
if [ -z "$crate_version" ] || [ -z "$dir" ]; then
  echo "Cargo.lock locks no librocksdb-sys or .cargo/config.toml names no ROCKSDB_LIB_DIR" >&2
  exit 1
fi
case "$(basename "$dir")" in
  rocksdb-"$version"-r*) ;;
  *) echo ".cargo/config.toml's ROCKSDB_LIB_DIR ($dir) is not named for RocksDB $version, which Cargo.lock's $crate carries: name it rocksdb-$version-r1" >&2; exit 1 ;;
esac
if [ "${1:-}" = "--print-dir" ]; then
  echo "$dir"
  exit 0
fi
[ -n "${ROCKSDB_LIB_DIR:-}" ] && exit 0
[ -f "$dir/librocksdb.a" ] && exit 0

sudo=""
if ! mkdir -p "$(dirname "$dir")" 2>/dev/null || [ ! -w "$(dirname "$dir")" ]; then
  sudo="sudo"
fi

echo "== building RocksDB $version (a release static library, once per machine: about 8 minutes on two cores)"
cargo fetch --quiet
cargo_home=${CARGO_HOME:-$HOME/.cargo}
archive=$(ls "$cargo_home"/registry/cache/*/"$crate.crate" 2>/dev/null | head -1)
if [ -z "$archive" ]; then
  echo "cargo fetch left no $crate.crate under $cargo_home/registry/cache" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$archive" -C "$work" "$crate/rocksdb"
start=$(date +%s)
# PORTABLE: no -march=native, so the library runs on any machine of this architecture. The
# compression libraries are those scripts/deps.sh installs (crates/weir-rocksdb/build.rs links
# them); everything else RocksDB would detect and link is off. No debug info (-g0): it would make
# the archive 30 times larger and the build slower, and nothing here debugs inside RocksDB.
make -C "$work/$crate/rocksdb" -j"$(nproc)" static_lib \
  DEBUG_LEVEL=0 PORTABLE=1 USE_RTTI=1 DISABLE_WARNING_AS_ERROR=1 EXTRA_CXXFLAGS=-g0 EXTRA_CFLAGS=-g0 \
  ROCKSDB_DISABLE_GFLAGS=1 ROCKSDB_DISABLE_JEMALLOC=1 ROCKSDB_DISABLE_TCMALLOC=1 ROCKSDB_DISABLE_NUMA=1 \
  ROCKSDB_DISABLE_TBB=1 ROCKSDB_DISABLE_MEMKIND=1 ROCKSDB_DISABLE_BENCHMARK=1 ROCKSDB_USE_IO_URING=0 \
  >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log" >&2
  echo "RocksDB $version failed to build (the log's end above); nothing was installed. Fix what it names (often a missing -dev package), or point ROCKSDB_LIB_DIR at a RocksDB 7.x of your own" >&2
  exit 1
}
# Installed under a temporary name and renamed, so an interrupted install is never taken for one.
$sudo mkdir -p "$dir"
$sudo cp "$work/$crate/rocksdb/librocksdb.a" "$dir/librocksdb.a.partial"
$sudo mv "$dir/librocksdb.a.partial" "$dir/librocksdb.a"
echo "RocksDB $version built in $(( $(date +%s) - start )) s: $dir/librocksdb.a"
