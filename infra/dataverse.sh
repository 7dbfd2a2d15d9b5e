#!/usr/bin/env bash
# The strict Dataverse Web API emulator (infra/emulators/dataverse.py) on loopback, with its own token endpoint, for
# the Dynamics 365 handoff tests and demos.
#   infra/dataverse.sh start   start it (no-op when already running on this port); waits until it answers
#   infra/dataverse.sh stop    stop it (no-op when not running)
#   infra/dataverse.sh url     print its base URL (the environment URL and the token authority)
#   infra/dataverse.sh env     print the `export` lines the tests need (test.sh evals this)
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom), MAILROOM_DATAVERSE_PORT (default 45690),
#              MAILROOM_PYTHON (default python3; only the standard library is used).
# Pid file and log: $MAILROOM_CACHE/run/dataverse-<port>.{pid,log}
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PORT=${MAILROOM_DATAVERSE_PORT:-45690}
PYTHON=${MAILROOM_PYTHON:-python3}
RUN="$MAILROOM_CACHE/run"
PIDFILE="$RUN/dataverse-$PORT.pid"
LOGFILE="$RUN/dataverse-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { printf 'dataverse: %s\n' "$*" >&2; }

# The pid in the file is ours only if that process still runs dataverse.py (pids get reused).
our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q dataverse.py "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

answers() { curl -fsS -o /dev/null --max-time 1 "$URL/health" 2>/dev/null; }

start() {
  if our_pid >/dev/null && answers; then
    log "already running at $URL (pid $(our_pid))"
    return 0
  fi
  if answers; then
    log "port $PORT already answers but is not ours (no live pid in $PIDFILE); set MAILROOM_DATAVERSE_PORT"
    exit 1
  fi
  mkdir -p "$RUN"
  setsid "$PYTHON" "$ROOT/infra/emulators/dataverse.py" --host 127.0.0.1 --port "$PORT" >"$LOGFILE" 2>&1 </dev/null &
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
    # The emulator's built-in environment: tenant, and the client whose application user holds every privilege the
    # handoff needs (mailroom-limited lacks prvCreateIncident).
    printf 'export MAILROOM_TEST_DATAVERSE_URL=%q\n' "$URL"
    printf 'export MAILROOM_TEST_DATAVERSE_TENANT=%q\n' mailroom-demo
    printf 'export MAILROOM_TEST_DATAVERSE_CLIENT_ID=%q\n' mailroom-handoff
    printf 'export MAILROOM_TEST_DATAVERSE_CLIENT_SECRET=%q\n' mailroom-handoff-secret
    ;;
  *)
    echo "usage: $0 start|stop|url|env" >&2
    exit 2
    ;;
esac
