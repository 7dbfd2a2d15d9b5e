#!/usr/bin/env bash
# The strict Microsoft Graph emulator (infra/emulators/graph.py) on loopback, with its own token endpoint (delegated
# sign-in included), for the Teams chat tests and demos.
#   infra/graph.sh start   start it (no-op when already running on this port); waits until it answers
#   infra/graph.sh stop    stop it (no-op when not running)
#   infra/graph.sh url     print its base URL (the token authority; Graph is under /v1.0)
#   infra/graph.sh env     print the `export` lines the tests need (test.sh evals this)
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom), MAILROOM_GRAPH_PORT (default 45710),
#              MAILROOM_PYTHON (default python3; only the standard library is used).
# Pid file and log: $MAILROOM_CACHE/run/graph-<port>.{pid,log}
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PORT=${MAILROOM_GRAPH_PORT:-45710}
PYTHON=${MAILROOM_PYTHON:-python3}
RUN="$MAILROOM_CACHE/run"
PIDFILE="$RUN/graph-$PORT.pid"
LOGFILE="$RUN/graph-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { printf 'graph: %s\n' "$*" >&2; }

# The pid in the file is ours only if that process still runs graph.py (pids get reused).
our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q graph.py "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

answers() { curl -fsS -o /dev/null --max-time 1 "$URL/health" 2>/dev/null; }

start() {
  if our_pid >/dev/null && answers; then
    log "already running at $URL (pid $(our_pid))"
    return 0
  fi
  if answers; then
    log "port $PORT already answers but is not ours (no live pid in $PIDFILE); set MAILROOM_GRAPH_PORT"
    exit 1
  fi
  mkdir -p "$RUN"
  setsid "$PYTHON" "$ROOT/infra/emulators/graph.py" --host 127.0.0.1 --port "$PORT" >"$LOGFILE" 2>&1 </dev/null &
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

stop() {
  local pid i
  if ! pid=$(our_pid); then
    rm -f "$PIDFILE"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  env)
    # The emulator's built-in tenant and its app (tests create isolated tenants of their own on it).
    printf 'export MAILROOM_TEST_GRAPH_URL=%q\n' "$URL"
    printf 'export MAILROOM_TEST_GRAPH_TENANT=%q\n' mailroom-demo
    printf 'export MAILROOM_TEST_GRAPH_CLIENT_ID=%q\n' mailroom-teams
    printf 'export MAILROOM_TEST_GRAPH_CLIENT_SECRET=%q\n' mailroom-teams-secret
    ;;
  *)
    echo "usage: $0 start|stop|url|env" >&2
    exit 2
    ;;
esac
