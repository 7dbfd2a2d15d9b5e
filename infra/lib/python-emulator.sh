# shellcheck shell=bash
# Sourced by the scripts of our standard-library Python emulators (identity, dataverse, graph): one
# start|stop|url|env shape, a pid file and a log per port, and a `/health` check.
# The caller sets NAME (also infra/emulators/$NAME.py), PORT_VAR (the variable that moves the port),
# DEFAULT_PORT, and a function `print_env` that prints the `export` lines its tests need; then it
# calls `emulator_main "$@"`.
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom), $PORT_VAR, MAILROOM_PYTHON (default python3).
# Pid file and log: $MAILROOM_CACHE/run/$NAME-<port>.{pid,log}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PORT=${!PORT_VAR:-$DEFAULT_PORT}
PYTHON=${MAILROOM_PYTHON:-python3}
RUN="$MAILROOM_CACHE/run"
PIDFILE="$RUN/$NAME-$PORT.pid"
LOGFILE="$RUN/$NAME-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }

# The pid in the file is ours only if that process still runs $NAME.py (pids get reused).
our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q "$NAME.py" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

answers() { curl -fsS -o /dev/null --max-time 1 "$URL/health" 2>/dev/null; }

start() {
  if our_pid >/dev/null && answers; then
    log "already running at $URL (pid $(our_pid))"
    return 0
  fi
  if answers; then
    log "port $PORT already answers but is not ours (no live pid in $PIDFILE); set $PORT_VAR"
    exit 1
  fi
  mkdir -p "$RUN"
  # setsid: its own process group, so a Ctrl-C in the caller's terminal leaves stopping to `stop`.
  setsid "$PYTHON" "$ROOT/infra/emulators/$NAME.py" --host 127.0.0.1 --port "$PORT" >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local i
  for ((i = 0; i < 100; i++)); do # ~10 s
    if answers; then
      log "up at $URL (pid $(cat "$PIDFILE"))"
      return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "exited during start; log $LOGFILE:"
      tail -n 20 "$LOGFILE" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.1
  done
  log "did not answer at $URL/health within 10 s; log $LOGFILE:"
  tail -n 20 "$LOGFILE" >&2
  stop
  exit 1
}

# stop: see lib/server.sh.
# shellcheck source=infra/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/server.sh"

emulator_main() {
  case ${1:-} in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    env) print_env ;;
    *)
      echo "usage: $0 start|stop|url|env" >&2
      exit 2
      ;;
  esac
}
