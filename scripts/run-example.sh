#!/usr/bin/env bash
# Runs the word-count example end to end: writes a few JSON lines, runs the job over them with
# checkpoints and the exactly-once file sink, and shows what it printed and committed.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${WEIR_EXAMPLE_DIR:-$(mktemp -d)}
mkdir -p "$work"
input="$work/words.jsonl"
: > "$input"
for w in a b a c b a; do
  printf '{"word":"%s","frequency":1}\n' "$w" >> "$input"
done

./scripts/deps.sh
# The dev profile (optimized, see Cargo.toml): the tests build the same binary, and six lines need
# no link-time optimization.
cargo build --quiet -p weir-examples --bin word-count
echo "== word-count over $input"
./target/debug/word-count --input "$input" --output "$work/out" --checkpoints "$work/checkpoints" --bounded
echo "== committed output ($work/out)"
cat "$work"/out/part-*
