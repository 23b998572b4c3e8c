#!/usr/bin/env bash
# Runs Weir's whole test suite on a fresh machine: formatting, lints, and every test.
# Needs the Rust toolchain (cargo, rustfmt, clippy), which the machine image provides; installs
# the system packages the rocksdb backend links (scripts/deps.sh) itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

./scripts/deps.sh
# The Kafka-protocol broker the Kafka tests use (installed on first use: minutes; then seconds).
# It stays up after the run, so later runs reuse it.
./scripts/kafka.sh start
# The tests' independent Kafka client (a virtual environment with confluent-kafka), made once here
# rather than by several test processes at the same time.
./scripts/kafka.sh python >/dev/null
# An S3-compatible server (s3s-fs) for the object-storage tests (installed with cargo on first use).
./scripts/s3.sh start
# Apache Flink's own CLI (a Java program, from PyPI's Flink distribution) for the tests that drive
# Weir's REST API with it; installed once here rather than by several test processes at a time.
./scripts/flink-cli.sh path >/dev/null
# Headless Chromium and playwright-core for the web UI's test (Debian's package and npm; once).
./scripts/browser.sh path >/dev/null
# PostgreSQL with two-phase commit for the exactly-once sink's tests (installed from Debian when missing).
./scripts/postgres.sh start

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The S3 store is behind a feature (its TLS stack is a C build): lint and test it too.
cargo clippy -p weir-storage --features s3 --all-targets --quiet -- -D warnings

echo "== cargo test"
# Jobs started by tests log to stderr; keep CI output to errors unless RUST_LOG says otherwise.
log=$(mktemp)
# Jobs started by tests register in their own registry of running jobs, not in ~/.weir.
WEIR_HOME=$(mktemp -d)
export WEIR_HOME
trap 'rm -rf "$log" "$WEIR_HOME"' EXIT
status=0
RUST_LOG=${RUST_LOG:-error} cargo test --workspace --quiet 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ]; then
  RUST_LOG=${RUST_LOG:-error} cargo test -p weir-storage --features s3 --quiet 2>&1 | tee -a "$log" || status=$?
fi
if [ "$status" -eq 0 ]; then
  echo "== a job of one's own, built outside the workspace (scripts/own-job.sh)"
  ./scripts/own-job.sh || status=$?
fi
if [ "$status" -eq 0 ]; then
  echo "== the README's example command (scripts/run-example.sh)"
  example_log=$(mktemp)
  example=$(./scripts/run-example.sh 2>"$example_log") || { cat "$example_log" >&2; status=1; }
  rm -f "$example_log"
  # What it committed, after its last heading: each word's running count, exactly once.
  committed=$(printf '%s\n' "$example" | sed -n '/^== committed output/,$p' | tail -n +2 | sort)
  want=$(printf "WordCount{word='%s', frequency=%s}\n" a 1 a 2 a 3 b 1 b 2 c 1 | sort)
  if [ "$status" -eq 0 ] && [ "$committed" != "$want" ]; then
    printf 'run-example.sh committed:\n%s\nexpected:\n%s\n' "$committed" "$want" >&2
    status=1
  fi
  if [ "$status" -eq 0 ]; then
    echo "run-example.sh: committed the six expected counts"
  fi
fi
# One closing line for the whole suite (cargo ends with per-binary lines, the last often doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
