# shellcheck shell=bash
# Stopping a test server, shared by every infra/<server>.sh (sourced).

# stop_pid PID [TENTHS]: SIGTERM, up to TENTHS tenths of a second (default 50, ~5 s) to exit, then SIGKILL.
stop_pid() {
  local pid=$1 tenths=${2:-50} i
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
}

# stop: for a server whose pid file is ours. The caller defines `our_pid` (prints the pid when the process
# in PIDFILE is still that server) and `log`, and sets PIDFILE. A no-op when it is not running.
stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PIDFILE"
    return 0
  fi
  stop_pid "$pid"
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}
