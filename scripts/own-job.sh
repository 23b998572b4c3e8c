#!/usr/bin/env bash
# Builds a job crate of one's own outside Weir's workspace (none of the workspace's settings
# apply), as docs/write-your-own-job.md describes, then runs it with `weir run`, takes a savepoint,
# stops it with a savepoint and restores it from the printed path. Prints the build time. Needs the weir CLI built
# (cargo build -p weir-cli); uses target/debug/weir unless WEIR is set.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
weir=${WEIR:-$repo/target/debug/weir}
[ -x "$weir" ] || { echo "build the weir CLI first: cargo build -p weir-cli" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/my-job/src"
cp "$repo/scripts/own-job/src/main.rs" "$work/my-job/src/main.rs"
cat > "$work/my-job/Cargo.toml" <<TOML
[package]
name = "my-job"
version = "0.1.0"
edition = "2021"

[dependencies]
weir = { path = "$repo/crates/weir" }
TOML
# Resolve dependencies as the workspace does, so the build is the one its tests checked.
cp "$repo/Cargo.lock" "$work/my-job/Cargo.lock"

echo "== building my-job outside the workspace"
start=$(date +%s)
(cd "$work/my-job" && cargo build --quiet --offline 2>/dev/null || cargo build --quiet)
echo "my-job built in $(( $(date +%s) - start )) s"
job_bin="$work/my-job/target/debug/my-job"

# Built without the rocksdb feature, it refuses that backend and says how to get it.
if "$job_bin" -D state.backend.type=rocksdb "$work/refused" 2>"$work/refused.err"; then
  echo "a job built without the rocksdb feature accepted state.backend.type: rocksdb" >&2; exit 1
fi
grep -q "enable the 'rocksdb' feature" "$work/refused.err" || { cat "$work/refused.err" >&2; exit 1; }

export WEIR_HOME="$work/home"
cd "$work"
out=$("$weir" run -d "$job_bin" "$work/out")
job=$(sed -n 's/^Job has been submitted with JobID //p' <<<"$out")
wait_lines() { # wait until the committed output has at least $1 lines
  for _ in $(seq 1 300); do
    [ "$(cat "$work"/out/part-* 2>/dev/null | wc -l)" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 committed lines" >&2; exit 1
}
wait_lines 20
taken=$("$weir" savepoint "$job" "$work/savepoints")
grep -q '^Savepoint completed. Path: file:' <<<"$taken" || { echo "$taken" >&2; exit 1; }
path=$("$weir" stop "$job" --savepoint-path "$work/savepoints" | sed -n 's/^Savepoint completed. Path: //p')
echo "stopped with savepoint: $path"
for _ in $(seq 1 100); do [ -e "$WEIR_HOME/jobs/$job.json" ] || break; sleep 0.1; done
before=$(cat "$work"/out/part-* | wc -l)
out=$("$weir" run -d -s "$path" "$job_bin" "$work/out")
job=$(sed -n 's/^Job has been submitted with JobID //p' <<<"$out")
wait_lines $((before + 20))
"$weir" cancel "$job" >/dev/null
# Each key counts on from the savepoint: no "key n" line twice, and counts beyond the savepoint.
dups=$(cat "$work"/out/part-* | sort | uniq -d | wc -l)
max=$(cat "$work"/out/part-* | awk '{ if ($2 > m) m = $2 } END { print m }')
[ "$dups" -eq 0 ] || { echo "duplicated lines after the restore" >&2; exit 1; }
[ "$max" -gt 2 ] || { echo "counts did not continue after the restore" >&2; exit 1; }
echo "my-job: ran, savepointed, restored from $path; $(cat "$work"/out/part-* | wc -l) lines, highest count $max"
