#!/usr/bin/env bash
# A PostgreSQL server for tests, on loopback only, with two-phase commit enabled
# (max_prepared_transactions), installed from Debian's packages when missing.
#
#   scripts/postgres.sh start   # initializes the data directory on first use, starts the server
#   scripts/postgres.sh stop
#   scripts/postgres.sh url     # prints postgres://postgres@127.0.0.1:PORT/postgres
#
# Port: WEIR_PG_PORT (default 55432). Data: WEIR_PG_DIR (default $TMPDIR/weir-postgres-PORT).
# Authentication is `trust` on loopback: the server is for tests on this machine only.
set -euo pipefail

port="${WEIR_PG_PORT:-55432}"
dir="$(realpath -m "${WEIR_PG_DIR:-${TMPDIR:-/tmp}/weir-postgres-$port}")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

install() {
  [ -n "$(bin_dir)" ] && return 0
  echo "== installing postgresql" >&2
  as_root apt-get update -qq
  # (A cluster the package may start on 5432 is not ours; the tests use their own, on $port.)
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
}

# initdb and the server refuse to run as root: as root, they run as the `postgres` user.
run() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  install
  local bin
  bin="$(bin_dir)"
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    run "$bin/initdb" -D "$dir" -U postgres -A trust --no-sync >/dev/null
  fi
  if run "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    return 0
  fi
  run "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_prepared_transactions=64 -c fsync=off" start >/dev/null
  echo "postgres on 127.0.0.1:$port (data $dir)" >&2
}

stop() {
  local bin
  bin="$(bin_dir)"
  [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] || return 0
  run "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "postgres://postgres@127.0.0.1:$port/postgres" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
