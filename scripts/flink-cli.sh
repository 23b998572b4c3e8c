#!/usr/bin/env bash
# Apache Flink's own command-line client, for the tests that drive Weir's REST API with it: the
# Flink 2.3 distribution from PyPI (apache-flink-libraries ships lib/*.jar, apache-flink the bin/
# scripts; installed without their Python dependencies, which the CLI does not use) in a virtual
# environment, and a Java runtime (Debian's openjdk-17-jre-headless when `java` is missing).
#
#   scripts/flink-cli.sh path       # installs if missing; prints the path of bin/flink
#   scripts/flink-cli.sh -- ARGS    # runs `flink ARGS`
#
# Where: WEIR_FLINK_VENV (default ~/.cache/weir/flink-cli). About 360 MB, downloaded once.
set -euo pipefail

version=2.3.0
venv="${WEIR_FLINK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/flink-cli}"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "== installing $*" >&2
  sudo_if_needed apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq "$@" >&2
}

install() {
  if ! command -v java >/dev/null 2>&1; then
    apt_install openjdk-17-jre-headless
  fi
  local site flink
  if [ -x "$venv/bin/python" ]; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [ -x "$site/pyflink/bin/flink" ] && [ -f "$site/pyflink/lib/flink-dist-$version.jar" ]; then
      echo "$site/pyflink/bin/flink"
      return 0
    fi
  fi
  echo "== installing the Flink $version client into $venv (about 360 MB, once)" >&2
  if ! python3 -m venv "$venv" >&2; then
    apt_install python3-venv
    python3 -m venv "$venv" >&2
  fi
  "$venv/bin/pip" install --quiet --no-deps "apache-flink-libraries==$version" "apache-flink==$version" >&2
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  flink="$site/pyflink/bin/flink"
  chmod +x "$site"/pyflink/bin/*
  [ -x "$flink" ] || { echo "no Flink client at $flink after installing" >&2; exit 1; }
  echo "$flink"
}

case "${1:-}" in
  path) install ;;
  --)
    shift
    flink=$(install)
    exec "$flink" "$@"
    ;;
  *)
    echo "usage: $0 path | -- FLINK_ARGS..." >&2
    exit 2
    ;;
esac
