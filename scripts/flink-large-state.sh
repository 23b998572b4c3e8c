#!/usr/bin/env bash
# Apache Flink 2.3 on this machine, running Weir's large-state benchmark shape
# (scripts/flink/LargeState.java: counter source -> i % KEYS -> keyBy -> count in ValueState<Long>,
# RocksDB, 10 s checkpoints, p=1): the reference figures docs/benchmarks.md compares Weir's with.
# Starts a local Flink cluster of its own, prints the keyed vertex's records per second every 10 s,
# then stops the cluster. A benchmark, not a test.
#
#   scripts/flink-large-state.sh KEYS [SAMPLES] [MANAGED_MEMORY]
#   scripts/flink-large-state.sh 10000000 14          # Flink's default managed memory
#   scripts/flink-large-state.sh 1000000 8 128m       # the memory Weir's default budget gives
#
# Uses the Flink distribution scripts/flink-cli.sh installs; compiles the job with javac
# (Debian's openjdk-17-jdk-headless when missing). Flink's REST port 8081 must be free.
set -euo pipefail

keys=${1:?usage: flink-large-state.sh KEYS [SAMPLES] [MANAGED_MEMORY]}
samples=${2:-10}
managed=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
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
javac -cp "$home/lib/*" -d "$work/classes" "$here/flink/LargeState.java"
(cd "$work/classes" && jar cfe "$work/large-state.jar" ref.LargeState ref)
cp -r "$home/conf" "$work/conf"
printf 'state:\n  backend:\n    type: rocksdb\nexecution:\n  checkpointing:\n    dir: file://%s/ck\n' "$work" \
  >>"$work/conf/config.yaml"

"$home/bin/jobmanager.sh" start >/dev/null
tm_args=()
if [ -n "$managed" ]; then
  tm_args=(-D "taskmanager.memory.managed.size=$managed")
fi
"$home/bin/taskmanager.sh" start "${tm_args[@]}" >/dev/null
for _ in $(seq 1 60); do
  curl -sf localhost:8081/overview | grep -q '"slots-available":1' && break
  sleep 1
done

job=$("$home/bin/flink" run -d -c ref.LargeState "$work/large-state.jar" "$keys" 2>&1 |
  grep -o 'JobID [0-9a-f]*' | awk '{print $2}')
[ -n "$job" ] || { echo "the job did not start (logs in $work/log)" >&2; exit 1; }
echo "Flink 2.3, $keys keys, RocksDB${managed:+, managed memory $managed}: keyed vertex records read"
read_records() {
  curl -sf "localhost:8081/jobs/$job" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["vertices"][1]["metrics"]["read-records"])'
}
previous=0
for i in $(seq 1 "$samples"); do
  sleep 10
  now=$(read_records)
  python3 -c "print('t=%3d s  records %10d  %.3f M/s' % ($i * 10, $now, ($now - $previous) / 10 / 1e6))"
  previous=$now
done
"$home/bin/flink" cancel "$job" >/dev/null 2>&1 || true
