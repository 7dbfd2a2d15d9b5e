#!/usr/bin/env bash
# The SMTP sink (infra/emulators/smtp_sink.py, aiosmtpd) on loopback for the outbound mail tests: STARTTLS on one port,
# implicit TLS on another, AUTH PLAIN/LOGIN with test accounts, each accepted message saved as .eml + .json (envelope).
# Recipients starting with "reject" get 550, with "defer" 451.
#   infra/smtp_sink.sh start   start it (no-op when already running on these ports); waits until it greets
#   infra/smtp_sink.sh stop    stop it (no-op when not running)
#   infra/smtp_sink.sh url     print its STARTTLS endpoint
#   infra/smtp_sink.sh env     print the `export` lines the tests need (test.sh evals this)
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom; the venv with aiosmtpd comes from infra/setup.sh),
#              MAILROOM_SMTP_SINK_PORT (STARTTLS, default 45701), MAILROOM_SMTP_SINK_TLS_PORT (implicit TLS, default 45702).
# Files: $MAILROOM_CACHE/run/smtp-sink-<port>/{tls/,mail/,sink.pid,sink.log}. The test CA and its localhost/127.0.0.1
# leaf are made with openssl on first start (rustls refuses a self-signed certificate that is its own CA).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PORT=${MAILROOM_SMTP_SINK_PORT:-45701}
TLS_PORT=${MAILROOM_SMTP_SINK_TLS_PORT:-45702}
DIR="$MAILROOM_CACHE/run/smtp-sink-$PORT"
PIDFILE="$DIR/sink.pid"
LOGFILE="$DIR/sink.log"
PYTHON="$MAILROOM_CACHE/venv/bin/python"
# Test accounts (login:password). The tests sign in with these; nothing else uses them.
ACCOUNTS="support@example.com:support-secret,sales@example.com:sales-secret,ana:ana-secret,ana@example.com:ana-secret"

log() { printf 'smtp-sink: %s\n' "$*" >&2; }

our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q smtp_sink.py "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

greets() { # port [tls] -> true when an SMTP greeting arrives
  "$PYTHON" - "$1" "${2:-}" <<'PY' 2>/dev/null
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
if sys.argv[2]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    s = ctx.wrap_socket(s, server_hostname="localhost")
sys.exit(0 if s.recv(3) == b"220" else 1)
PY
}

make_tls() {
  local tls="$DIR/tls"
  mkdir -p "$tls"
  if [[ -f $tls/server.crt ]] && openssl x509 -checkend 2592000 -noout -in "$tls/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$tls/ca.key" \
    -out "$tls/ca.crt" -days 3650 -subj "/CN=Mailroom SMTP sink test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$tls/server.key" \
    -out "$tls/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/leaf.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -out "$tls/server.crt" -days 825 -extfile "$tls/leaf.ext" 2>/dev/null
  chmod 600 "$tls/ca.key" "$tls/server.key"
  log "made a test CA and a certificate for localhost/127.0.0.1 in $tls"
}

start() {
  if our_pid >/dev/null && greets "$PORT"; then
    log "already running on $PORT/$TLS_PORT (pid $(our_pid))"
    return 0
  fi
  [[ -x $PYTHON ]] || { log "no $PYTHON: run infra/setup.sh first"; exit 1; }
  "$PYTHON" -c 'import aiosmtpd' 2>/dev/null || { log "aiosmtpd is not in the venv: run infra/setup.sh"; exit 1; }
  command -v openssl >/dev/null || { log "openssl is not installed"; exit 1; }
  local port
  for port in "$PORT" "$TLS_PORT"; do
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
      log "port $port is already in use (not by our sink); set MAILROOM_SMTP_SINK_PORT / _TLS_PORT"
      exit 1
    fi
  done
  mkdir -p "$DIR/mail"
  make_tls
  setsid "$PYTHON" "$ROOT/infra/emulators/smtp_sink.py" --starttls-port "$PORT" --tls-port "$TLS_PORT" \
    --cert "$DIR/tls/server.crt" --key "$DIR/tls/server.key" --maildir "$DIR/mail" --accounts "$ACCOUNTS" \
    >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local i
  for ((i = 0; i < 100; i++)); do # ~10 s
    if greets "$PORT" && greets "$TLS_PORT" tls; then
      log "up: starttls $PORT, tls $TLS_PORT (pid $(cat "$PIDFILE"), mail in $DIR/mail)"
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
  log "no greeting within 10 s; log $LOGFILE:"
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
  url) echo "smtp://localhost:$PORT" ;;
  env)
    printf 'export MAILROOM_TEST_SMTP_HOST=%q\n' localhost
    printf 'export MAILROOM_TEST_SMTP_STARTTLS_PORT=%q\n' "$PORT"
    printf 'export MAILROOM_TEST_SMTP_TLS_PORT=%q\n' "$TLS_PORT"
    printf 'export MAILROOM_TEST_SMTP_CA=%q\n' "$DIR/tls/ca.crt"
    printf 'export MAILROOM_TEST_SMTP_MAILDIR=%q\n' "$DIR/mail"
    ;;
  *)
    echo "usage: $0 start|stop|url|env" >&2
    exit 2
    ;;
esac
