#!/usr/bin/env bash
# An S3-compatible server for tests (s3s-fs 0.14.1: real SigV4 authentication, objects as files),
# on loopback only, installed with cargo when missing (about 3 minutes the first time).
#
#   scripts/s3.sh start                 # starts it unless it runs
#   scripts/s3.sh stop
#   scripts/s3.sh endpoint              # prints http://127.0.0.1:PORT
#   scripts/s3.sh pid                   # prints the running server's process id
#   scripts/s3.sh create-bucket NAME
#   scripts/s3.sh pause | resume        # freezes / thaws the server (requests hang, as on a stalled network)
#
# Port: WEIR_S3_PORT (default 9000). Credentials: WEIR_S3_ACCESS_KEY / WEIR_S3_SECRET_KEY (defaults
# weir-test-access / weir-test-secret: a server for tests on this machine only). Data and pid
# file: WEIR_S3_DIR (default $TMPDIR/weir-s3-PORT).
set -euo pipefail

port="${WEIR_S3_PORT:-9000}"
dir="$(realpath -m "${WEIR_S3_DIR:-${TMPDIR:-/tmp}/weir-s3-$port}")"
access="${WEIR_S3_ACCESS_KEY:-weir-test-access}"
secret="${WEIR_S3_SECRET_KEY:-weir-test-secret}"
bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"

install() {
  install_with_cargo "$bin" 0.14.1 "s3s-fs 0.14.1 (an S3-compatible server for tests)" s3s-fs@0.14.1 --features binary
}

name="s3 (s3s-fs)"
log=server.log
# shellcheck source=lib/daemon.sh
. "$(dirname "$0")/lib/daemon.sh"

start() {
  install
  mkdir -p "$dir/data"
  start_daemon "$bin" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" "$dir/data"
}

stop() {
  stop_daemon
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
  pid) running && cat "$dir/pid" || { echo "no $name runs on port $port" >&2; exit 1; } ;;
  create-bucket) shift; create_bucket "$@" ;;
  pause) signal_daemon STOP ;;
  resume) signal_daemon CONT ;;
  *) echo "usage: $0 start|stop|endpoint|pid|create-bucket NAME|pause|resume" >&2; exit 2 ;;
esac
