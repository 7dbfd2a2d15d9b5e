#!/usr/bin/env bash
# moto's server (AWS APIs: S3, SQS, DynamoDB, SES) on loopback for the integration tests.
#   infra/moto.sh start   start it (no-op when already running on this port); waits until it answers
#   infra/moto.sh stop    stop it (no-op when not running)
#   infra/moto.sh url     print its endpoint URL
#   infra/moto.sh env     print the `export` lines the tests need (test.sh evals this)
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom; the venv comes from infra/setup.sh),
#              MAILROOM_MOTO_PORT (default 45660). Pid file and log: $MAILROOM_CACHE/run/moto-<port>.{pid,log}
# Every infra/<server>.sh follows this same start|stop|url|env shape, so test.sh can run a list of them.
set -euo pipefail

MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PORT=${MAILROOM_MOTO_PORT:-45660}
RUN="$MAILROOM_CACHE/run"
PIDFILE="$RUN/moto-$PORT.pid"
LOGFILE="$RUN/moto-$PORT.log"
PYTHON="$MAILROOM_CACHE/venv/bin/python"
# moto's own server, with DynamoDB transactions that copy only the items they touch (see the file).
SERVER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/emulators/moto_server.py"
URL="http://127.0.0.1:$PORT"

log() { printf 'moto: %s\n' "$*" >&2; }

# The pid in the file is ours only if that process is still a moto_server (pids get reused).
our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

answers() { curl -fsS -o /dev/null --max-time 1 "$URL/moto-api/" 2>/dev/null; }

start() {
  if our_pid >/dev/null && answers; then
    log "already running at $URL (pid $(our_pid))"
    return 0
  fi
  [[ -x $PYTHON ]] || { log "no $PYTHON: run infra/setup.sh first"; exit 1; }
  if answers; then
    log "port $PORT already answers but is not ours (no live pid in $PIDFILE); set MAILROOM_MOTO_PORT"
    exit 1
  fi
  mkdir -p "$RUN"
  # setsid: its own process group, so a Ctrl-C in the caller's terminal leaves stopping to `stop`.
  setsid "$PYTHON" "$SERVER" -H 127.0.0.1 -p "$PORT" >"$LOGFILE" 2>&1 </dev/null &
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
  log "did not answer at $URL/moto-api/ within 10 s; log $LOGFILE:"
  tail -n 20 "$LOGFILE" >&2
  stop
  exit 1
}

# stop: see lib/server.sh.
# shellcheck source=infra/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"

case ${1:-} in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  env) printf 'export MAILROOM_TEST_MOTO_URL=%q\n' "$URL" ;;
  *)
    echo "usage: $0 start|stop|url|env" >&2
    exit 2
    ;;
esac
