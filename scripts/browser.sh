#!/usr/bin/env bash
# A headless browser for the web UI's tests: Debian's Chromium (package chromium) driven by
# Playwright's library (npm playwright-core, which uses the installed Chromium and downloads no
# browser of its own). Installs what is missing.
#
#   scripts/browser.sh path    # prints the directory whose node_modules hold playwright-core
#
# Where: WEIR_BROWSER_DIR (default ~/.cache/weir/browser).
set -euo pipefail

dir="${WEIR_BROWSER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/browser}"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}" >&2
    sudo_if_needed apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq "${missing[@]}" >&2
  fi
  if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
    echo "== installing playwright-core into $dir" >&2
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund playwright-core@1 >&2)
  fi
  echo "$dir"
}

case "${1:-}" in
  path) install ;;
  *)
    echo "usage: $0 path" >&2
    exit 2
    ;;
esac
