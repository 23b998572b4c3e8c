#!/usr/bin/env bash
# An S3-compatible server for tests (s3s-fs 0.14.1: real SigV4 authentication, objects as files),
# on loopback only, installed with cargo when missing (about 3 minutes the first time).
#
#   scripts/s3.sh start                 # starts it unless it runs
#   scripts/s3.sh stop
#   scripts/s3.sh endpoint              # prints http://127.0.0.1:PORT
#   scripts/s3.sh create-bucket NAME
#
# Port: WEIR_S3_PORT (default 9000). Credentials: WEIR_S3_ACCESS_KEY / WEIR_S3_SECRET_KEY (defaults
# weir-test-access / weir-test-secret: a server for tests on this machine only). Data and pid
# file: WEIR_S3_DIR (default $TMPDIR/weir-s3-PORT).
set -euo pipefail

port="${WEIR_S3_PORT:-9000}"
dir="${WEIR_S3_DIR:-${TMPDIR:-/tmp}/weir-s3-$port}"
access="${WEIR_S3_ACCESS_KEY:-weir-test-access}"
secret="${WEIR_S3_SECRET_KEY:-weir-test-secret}"
bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"

install() {
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q '0\.14\.1'; then
    return 0
  fi
  echo "== installing s3s-fs 0.14.1 (an S3-compatible server for tests)" >&2
  cargo install s3s-fs@0.14.1 --features binary --locked --quiet >&2
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

running() {
  [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

start() {
  install
  if running && listening; then
    return 0
  fi
  if listening; then
    echo "port $port is taken by another process: set WEIR_S3_PORT" >&2
    exit 1
  fi
  mkdir -p "$dir/data"
  nohup "$bin" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" \
    "$dir/data" >"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do
    if listening; then
      echo "s3 (s3s-fs) on http://127.0.0.1:$port (data $dir/data)" >&2
      return 0
    fi
    if ! running; then
      cat "$dir/server.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "s3s-fs did not listen on 127.0.0.1:$port within 10 s; log: $dir/server.log" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do
      running || break
      sleep 0.1
    done
  fi
  rm -f "$dir/pid"
}

# s3s-fs serves each directory of its root as a bucket.
create_bucket() {
  local name="${1:?usage: $0 create-bucket NAME}"
  mkdir -p "$dir/data/$name"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  endpoint) echo "http://127.0.0.1:$port" ;;
  create-bucket) shift; create_bucket "$@" ;;
  *) echo "usage: $0 start|stop|endpoint|create-bucket NAME" >&2; exit 2 ;;
esac
