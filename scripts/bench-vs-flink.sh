#!/usr/bin/env bash
# Weir beside Apache Flink 2.3 on one shape, alternating, so that both see the same machine: each
# round runs Flink (scripts/flink-bench.sh: 7 samples of 10 s, the first dropped as warm-up) then
# Weir (`weir-bench --single`, 3 runs of 10 s after 1 s of warm-up), and compares the medians of
# the round. Writes JSON (default bench-results/vs-flink-SHAPE-BACKEND-pP.json): every rate, each
# round's ratio, and the medians over all rounds. A benchmark, not a test: about 2.5 minutes a round.
#
#   scripts/bench-vs-flink.sh [-p PARALLELISM] SHAPE BACKEND [ROUNDS] [OUT]
#   scripts/bench-vs-flink.sh reference hashmap 4
#   scripts/bench-vs-flink.sh large-state rocksdb 3
#   scripts/bench-vs-flink.sh large-state:10000000 rocksdb 2
#   scripts/bench-vs-flink.sh -p 2 reference hashmap 3
#
# SHAPE is `reference` (1000 String keys) or `large-state[:KEYS]` (10^6 u64 keys unless KEYS says
# otherwise; 10^7 outgrows the rocksdb backend's write-back cache); BACKEND `hashmap` or
# `rocksdb`. p=1 unless -p says otherwise, 10 s checkpoints on both sides, each at its default
# memory.
set -euo pipefail

usage="usage: bench-vs-flink.sh [-p PARALLELISM] SHAPE BACKEND [ROUNDS] [OUT]"
. "$(dirname "$0")/lib/options.sh"
read_parallelism_option "$usage" "$@"
shift "$options_used"
shape=${1:?$usage}
backend=${2:?$usage}
rounds=${3:-4}
cd "$(dirname "$0")/.."
keys=""
case "$shape" in
  reference) flink_shape=reference ;;
  large-state) keys=1000000 ;;
  large-state:*) keys=${shape#large-state:} ;;
  *) echo "unknown shape '$shape': reference or large-state[:KEYS]" >&2; exit 2 ;;
esac
weir_keys=()
if [ -n "$keys" ]; then
  [[ "$keys" =~ ^[1-9][0-9]*$ ]] || { echo "large-state:KEYS needs a positive number of keys, not '$keys'" >&2; exit 2; }
  shape=large-state
  flink_shape=large-state:$keys
  weir_keys=(--keys "$keys")
fi
out=${4:-bench-results/vs-flink-$shape${keys:+-$keys}-$backend-p$parallelism.json}

./scripts/deps.sh
cargo build --release -q -p weir-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in $(seq 1 "$rounds"); do
  ./scripts/flink-bench.sh -p "$parallelism" "$flink_shape" "$backend" 7 "" "$work/flink-$round.json"
  for run in 1 2 3; do
    target/release/weir-bench --single "$shape,$parallelism,10000,$backend" --seconds 10 "${weir_keys[@]}" --out "$work/weir.json" |
      tail -n 1 >"$work/weir-$round-$run.json"
  done
  echo "round $round of $rounds done" >&2
done

mkdir -p "$(dirname "$out")"
python3 - "$work" "$rounds" "$shape" "$backend" "$parallelism" "$out" "$keys" <<'PY'
import json, statistics, sys
work, rounds, shape, backend, parallelism, out, keys = sys.argv[1:8]
rounds = int(rounds)
result = {"shape": shape, "backend": backend, "parallelism": int(parallelism), "checkpoint_interval_ms": 10000, "rounds": []}
if keys:
    result["keys"] = int(keys)
for r in range(1, rounds + 1):
    flink = json.load(open(f"{work}/flink-{r}.json"))
    weir = [json.load(open(f"{work}/weir-{r}-{k}.json"))["records_per_second"] for k in (1, 2, 3)]
    flink_median, weir_median = flink["records_per_second_median"], statistics.median(weir)
    result["rounds"].append({
        "flink_records_per_second": flink["records_per_second_samples"][1:],
        "flink_median": flink_median,
        "weir_records_per_second": weir,
        "weir_median": weir_median,
        "weir_over_flink": weir_median / flink_median,
    })
rs = result["rounds"]
result["flink_median"] = statistics.median(x["flink_median"] for x in rs)
result["weir_median"] = statistics.median(w for x in rs for w in x["weir_records_per_second"])
result["weir_over_flink_median_of_rounds"] = statistics.median(x["weir_over_flink"] for x in rs)
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
PY
