#!/usr/bin/env bash
# Apache Flink 2.3 on this machine, running Weir's benchmark shapes (scripts/flink/Shapes.java;
# 10 s checkpoints, p=1 unless -p says otherwise): the reference figures docs/benchmarks.md
# compares Weir's with.
# Starts a local Flink cluster of its own, samples the keyed vertex's records read every 10 s,
# stops the cluster, and writes JSON (default bench-results/flink-SHAPE-BACKEND-pP.json): every
# sample's rate and the median of all but the first (the JIT's warm-up). A benchmark, not a test.
#
#   scripts/flink-bench.sh [-p PARALLELISM] SHAPE BACKEND [SAMPLES] [MANAGED_MEMORY] [OUT]
#   scripts/flink-bench.sh reference hashmap 7
#   scripts/flink-bench.sh -p 2 reference hashmap 7
#   scripts/flink-bench.sh large-state:10000000 rocksdb 14       # Flink's default managed memory
#   scripts/flink-bench.sh large-state:1000000 rocksdb 8 128m    # the memory Weir's default budget gives
#
# SHAPE is `reference` (1000 String keys) or `large-state:KEYS` (u64 keys), as weir-bench names
# them; BACKEND `hashmap` or `rocksdb`. Weir's side of the comparison:
# `weir-bench --single reference,1,10000,hashmap` (scripts/bench-vs-flink.sh runs both in turn).
#
# Uses the Flink distribution scripts/flink-cli.sh installs; compiles the job with javac
# (Debian's openjdk-17-jdk-headless when missing). Flink's REST port 8081 must be free.
set -euo pipefail

usage="usage: flink-bench.sh [-p PARALLELISM] SHAPE BACKEND [SAMPLES] [MANAGED_MEMORY] [OUT]"
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/options.sh"
read_parallelism_option "$usage" "$@"
shift "$options_used"
shape=${1:?$usage}
backend=${2:?$usage}
samples=${3:-7}
managed=${4:-}
out=${5:-$here/../bench-results/flink-${shape//:/-}-$backend-p$parallelism.json}
case "$shape" in
  reference) job_args=("$parallelism" reference) ;;
  large-state:*) job_args=("$parallelism" large-state "${shape#large-state:}") ;;
  *) echo "unknown shape '$shape': reference or large-state:KEYS" >&2; exit 2 ;;
esac
case "$backend" in
  hashmap | rocksdb) ;;
  *) echo "unknown backend '$backend': hashmap or rocksdb" >&2; exit 2 ;;
esac
[[ "$samples" =~ ^[0-9]+$ ]] && [ "$samples" -ge 2 ] ||
  { echo "SAMPLES '$samples': a whole number of at least 2 (the first is the warm-up)" >&2; exit 2; }
if curl -sf -o /dev/null localhost:8081/overview; then
  echo "port 8081 already answers (a Flink cluster, or Weir's REST server?): this script starts a Flink cluster of its own there; stop that one and run it again" >&2
  exit 1
fi

home=$(dirname "$(dirname "$("$here/flink-cli.sh" path)")")
if ! command -v javac >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo=sudo; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jdk-headless
fi

work=$(mktemp -d)
export FLINK_CONF_DIR="$work/conf" FLINK_LOG_DIR="$work/log"
stop() {
  "$home/bin/taskmanager.sh" stop >/dev/null 2>&1 || true
  "$home/bin/jobmanager.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop EXIT

mkdir -p "$work/classes" "$work/log"
javac -cp "$home/lib/*" -d "$work/classes" "$here/flink/Shapes.java"
(cd "$work/classes" && jar cfe "$work/shapes.jar" ref.Shapes ref)
cp -r "$home/conf" "$work/conf"
printf 'state:\n  backend:\n    type: %s\nexecution:\n  checkpointing:\n    dir: file://%s/ck\n' \
  "$backend" "$work" >>"$work/conf/config.yaml"

"$home/bin/jobmanager.sh" start >/dev/null
tm_args=(-D "taskmanager.numberOfTaskSlots=$parallelism")
if [ -n "$managed" ]; then
  tm_args+=(-D "taskmanager.memory.managed.size=$managed")
fi
"$home/bin/taskmanager.sh" start "${tm_args[@]}" >/dev/null
for _ in $(seq 1 60); do
  curl -sf localhost:8081/overview | grep -q "\"slots-available\":$parallelism" && break
  sleep 1
done

job=$("$home/bin/flink" run -d -c ref.Shapes "$work/shapes.jar" "${job_args[@]}" 2>&1 |
  grep -o 'JobID [0-9a-f]*' | awk '{print $2}')
[ -n "$job" ] || { echo "the job did not start (logs in $work/log)" >&2; exit 1; }
echo "Flink 2.3, $shape, $backend, p=$parallelism${managed:+, managed memory $managed}: keyed vertex records read" >&2
read_records() {
  curl -sf "localhost:8081/jobs/$job" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["vertices"][1]["metrics"]["read-records"])'
}
previous=0
rates=()
for i in $(seq 1 "$samples"); do
  sleep 10
  now=$(read_records)
  rate=$(python3 -c "print(($now - $previous) / 10)")
  python3 -c "print('t=%3d s  records %10d  %.3f M/s' % ($i * 10, $now, $rate / 1e6))" >&2
  rates+=("$rate")
  previous=$now
done
"$home/bin/flink" cancel "$job" >/dev/null 2>&1 || true

mkdir -p "$(dirname "$out")"
python3 - "$out" "$shape" "$backend" "$parallelism" "$managed" "${rates[@]}" <<'PY'
import json, statistics, sys
out, shape, backend, parallelism, managed, *rates = sys.argv[1:]
rates = [float(r) for r in rates]
result = {
    "engine": "Apache Flink 2.3",
    "shape": shape,
    "backend": backend,
    "parallelism": int(parallelism),
    "checkpoint_interval_ms": 10000,
    "managed_memory": managed or "default",
    "sample_seconds": 10,
    "records_per_second_samples": rates,
    "records_per_second_median": statistics.median(rates[1:]),
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result))
PY
