#!/usr/bin/env bash
# Instructions per record of a weir-bench shape, counted by valgrind's callgrind: a figure that
# repeats exactly from run to run, where records per second on a shared machine vary by +-30 %
# (docs/benchmarks.md). Writes JSON (default bench-results/instructions-SHAPE.json) and prints it.
# A benchmark, not a test; installs valgrind (Debian) when missing.
#
#   scripts/bench-instructions.sh [SHAPE] [SECONDS] [OUT]
#   scripts/bench-instructions.sh reference 20
#
# SHAPE is a `weir-bench --single` shape run at p=1 without checkpoints (default reference).
# Per record: `total` is the source task's loop, every operator of the chain and the job's
# functions; `keyed_operator` the keyed process operator with the job's function in it;
# `keyed_function` the job's function alone (the benchmark's Count); `map` the job's map
# (`word`, building the record's string; reference shapes only).
set -euo pipefail

shape=${1:-reference}
seconds=${2:-20}
cd "$(dirname "$0")/.."
out=${3:-bench-results/instructions-$shape.json}

if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo=sudo; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
./scripts/deps.sh
cargo build --release -q -p weir-bench

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --fair-sched: valgrind runs one thread at a time; without it the measuring thread may wait
# indefinitely behind the task thread.
valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/callgrind.out" \
  target/release/weir-bench --single "$shape,1,0" --seconds "$seconds" --out "$work/run.json" \
  >"$work/stdout" 2>"$work/valgrind.log"

callgrind_annotate --inclusive=yes "$work/callgrind.out" >"$work/inclusive.txt"
callgrind_annotate --tree=caller "$work/callgrind.out" >"$work/callers.txt"

# Records: the calls the source task made into its chain.
records=$(grep -m1 -F 'SourceRunner>::run (' "$work/callers.txt" | grep -oE '\(([0-9,]+)x\)' | tr -d '(),x' || true)
if [ -z "$records" ] || [ "$records" -eq 0 ]; then
  echo "no records counted; callgrind said:" >&2
  tail -5 "$work/valgrind.log" >&2
  exit 1
fi
# A function's inclusive cost per record: the largest figure on a line naming it (its own line in
# the inclusive listing; the other lines name it as a caller or an inlined part).
per_record() {
  awk -v name="$1" -v n="$records" '
    index($0, name) { c = $1; gsub(",", "", c); if (c + 0 > max) max = c + 0 }
    END { printf "%.1f", max / n }' "$work/inclusive.txt"
}
total=$(per_record 'SourceTask<T,S> as weir_runtime::operator::SourceRunner>::run')
keyed=$(per_record 'KeyedProcessOp<K,I,O,F> as weir_runtime::operator::Output<I>>::emit')
function=$(per_record 'count::Count<K> as weir::functions::KeyedProcessFunction<K,T,()>>::process')
map=$(per_record 'weir_bench::word')

mkdir -p "$(dirname "$out")"
cat >"$out" <<EOF
{
  "shape": "$shape",
  "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "records": $records,
  "instructions_per_record": {
    "total": $total,
    "keyed_operator": $keyed,
    "keyed_function": $function,
    "map": $map
  }
}
EOF
cat "$out"
