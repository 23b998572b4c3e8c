#!/usr/bin/env bash
# A Kafka-protocol broker for tests (tansu 0.6.0, in-memory storage), on loopback only, installed
# with cargo when missing (8-17 minutes the first time on 2 cores; cached in ~/.cargo/bin).
#
#   scripts/kafka.sh start                        # starts the broker unless it is running
#   scripts/kafka.sh stop
#   scripts/kafka.sh brokers                      # prints 127.0.0.1:PORT
#   scripts/kafka.sh create-topic NAME PARTITIONS
#   scripts/kafka.sh python                       # prints a python with confluent-kafka (installs it)
#   scripts/kafka.sh pause|resume                 # freezes / thaws the broker (SIGSTOP / SIGCONT),
#                                                 # for tests of a broker that stops answering
#
# Port: WEIR_KAFKA_PORT (default 9092). State: WEIR_KAFKA_DIR (default $TMPDIR/weir-kafka-PORT)
# holds the pid file and the log. Storage is in memory: a restarted broker is empty.
set -euo pipefail

port="${WEIR_KAFKA_PORT:-9092}"
dir="$(realpath -m "${WEIR_KAFKA_DIR:-${TMPDIR:-/tmp}/weir-kafka-$port}")"
url="tcp://127.0.0.1:$port"
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
venv="${WEIR_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/py-kafka}"

install() {
  install_with_cargo "$tansu_bin" 0.6.0 "tansu 0.6.0 (a Kafka-protocol broker; takes minutes the first time)" \
    tansu --version 0.6.0 --features dynostore
}

name="kafka (tansu)"
log=broker.log
# shellcheck source=lib/daemon.sh
. "$(dirname "$0")/lib/daemon.sh"

start() {
  install
  # Its default listener binds every interface: always pass loopback.
  start_daemon "$tansu_bin" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/
}

stop() {
  stop_daemon
}

create_topic() {
  local name="${1:?usage: $0 create-topic NAME PARTITIONS}" partitions="${2:?usage: $0 create-topic NAME PARTITIONS}"
  "$tansu_bin" topic create "$name" --partitions "$partitions" --broker "$url" >/dev/null
}

# An independent client for tests: the confluent-kafka package bundles a current librdkafka
# (Debian's kcat links librdkafka 2.0.2, which cannot talk to tansu).
python() {
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    echo "== installing confluent-kafka into $venv" >&2
    if ! python3 -m venv "$venv" >&2; then
      # Debian's python3 needs its venv package.
      echo "== installing python3-venv" >&2
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo=sudo
      $sudo apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
      python3 -m venv "$venv" >&2
    fi
    "$venv/bin/pip" install --quiet 'confluent-kafka==2.16.*' >&2
  fi
  echo "$venv/bin/python"
}

case "${1:-}" in
  start) start ;;
  pause) signal_daemon STOP ;;
  resume) signal_daemon CONT ;;
  stop) stop ;;
  brokers) echo "127.0.0.1:$port" ;;
  create-topic) shift; create_topic "$@" ;;
  python) python ;;
  *) echo "usage: $0 start|stop|brokers|create-topic NAME PARTITIONS|python|pause|resume" >&2; exit 2 ;;
esac
