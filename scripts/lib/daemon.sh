# Shared by the scripts that run a test service in the background (kafka.sh, s3.sh): a process
# listening on 127.0.0.1:$port, its pid in $dir/pid and its output in $dir/$log.
# Callers set: port, dir, log, name (for messages).

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

running() {
  [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

# start_daemon COMMAND...: starts it unless it already runs; waits up to 10 s until it listens.
start_daemon() {
  if running && listening; then
    return 0
  fi
  if listening; then
    echo "port $port is taken by another process: choose another port for $name" >&2
    exit 1
  fi
  mkdir -p "$dir"
  # Started from its own directory: a daemon outlives the checkout that started it, and one whose
  # working directory is deleted fails requests that resolve paths (s3s-fs answers 500).
  (cd "$dir" && exec nohup "$@" >"$dir/$log" 2>&1) &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do
    if listening; then
      echo "$name on 127.0.0.1:$port (log $dir/$log)" >&2
      return 0
    fi
    if ! running; then
      echo "$name exited; its log:" >&2
      cat "$dir/$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$name did not listen on 127.0.0.1:$port within 10 s; log: $dir/$log" >&2
  exit 1
}

# signal_daemon SIG: sends SIG to the running service (STOP freezes it, CONT thaws it: a service
# that hangs rather than refuses, as a stalled network or server does).
signal_daemon() {
  running || { echo "no $name runs on port $port" >&2; exit 1; }
  kill "-$1" "$(cat "$dir/pid")"
}

stop_daemon() {
  if running; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do
      running || break
      sleep 0.1
    done
  fi
  rm -f "$dir/pid"
}

# install_with_cargo BIN VERSION WHAT CARGO_INSTALL_ARGS...: installs unless BIN reports VERSION.
install_with_cargo() {
  local bin="$1" version="$2" what="$3"
  shift 3
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$version"; then
    return 0
  fi
  echo "== installing $what" >&2
  cargo install "$@" --locked --quiet >&2
}
