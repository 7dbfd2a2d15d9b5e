#!/usr/bin/env bash
# Debian's dovecot on loopback high ports, for the mailbox tests and the poll benchmark: IMAP and POP3, each
# plain (with STARTTLS/STLS offered) and with implicit TLS, a test CA, passwd-file users with {PLAIN}
# passwords (one file per user, added while it runs), and XOAUTH2/OAUTHBEARER checked against the local
# token authority (infra/identity.sh).
#   infra/dovecot.sh start   start it (no-op when already running); waits for the IMAP greeting
#   infra/dovecot.sh stop    stop it (no-op when not running; dovecot takes 2-3 s to stop)
#   infra/dovecot.sh url     print the IMAP URL
#   infra/dovecot.sh env     print the `export` lines the tests need (test.sh evals this), and how to add users
# Environment:
#   MAILROOM_DOVECOT_IMAP_PORT / _IMAPS_PORT / _POP3_PORT / _POP3S_PORT   (defaults 45143 / 45993 / 45110 / 45995)
#   MAILROOM_DOVECOT_DIR     server directory (default /tmp/mailroom-dovecot-<imap port>: dovecot's own users
#                            must reach it, which a home directory of mode 700 does not allow)
#   MAILROOM_IDENTITY_PORT   the token authority's port, for token introspection (default 45680)
# Needs dovecot-core, dovecot-imapd, dovecot-pop3d and openssl (infra/setup.sh installs them).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAP_PORT=${MAILROOM_DOVECOT_IMAP_PORT:-45143}
IMAPS_PORT=${MAILROOM_DOVECOT_IMAPS_PORT:-45993}
POP3_PORT=${MAILROOM_DOVECOT_POP3_PORT:-45110}
POP3S_PORT=${MAILROOM_DOVECOT_POP3S_PORT:-45995}
DIR=${MAILROOM_DOVECOT_DIR:-/tmp/mailroom-dovecot-$IMAP_PORT}
IDENTITY_URL="http://127.0.0.1:${MAILROOM_IDENTITY_PORT:-45680}"
CONF="$DIR/dovecot.conf"
PIDFILE="$DIR/base/master.pid"

log() { printf 'dovecot: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The pid in dovecot's own pid file is ours only if that process is still a dovecot master.
our_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && grep -q dovecot "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

greets() { # port -> true when an IMAP or POP3 greeting arrives
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 5 <&3" 2>/dev/null | grep -qE '^(\* OK|\+OK)'
}

# A small CA and a CA:FALSE leaf for localhost and 127.0.0.1: rustls refuses a self-signed certificate
# that is its own CA (CaUsedAsEndEntity). Made once; kept while it is valid for another 30 days.
make_tls() {
  local tls="$DIR/tls"
  if [[ -f $tls/server.crt ]] && openssl x509 -checkend 2592000 -noout -in "$tls/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$tls"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$tls/ca.key" \
    -out "$tls/ca.crt" -days 3650 -subj "/CN=Mailroom test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$tls/server.key" \
    -out "$tls/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -out "$tls/server.crt" -days 825 -extfile "$tls/server.ext" 2>/dev/null
  chmod 600 "$tls/ca.key" "$tls/server.key"
  chmod 644 "$tls/ca.crt" "$tls/server.crt"
  log "made a test CA and a certificate for localhost/127.0.0.1 in $tls"
}

render() { # template output
  sed -e "s|@DIR@|$DIR|g" -e "s|@IMAP_PORT@|$IMAP_PORT|g" -e "s|@IMAPS_PORT@|$IMAPS_PORT|g" \
    -e "s|@POP3_PORT@|$POP3_PORT|g" -e "s|@POP3S_PORT@|$POP3S_PORT|g" -e "s|@IDENTITY_URL@|$IDENTITY_URL|g" \
    -e "s|@LOGIN_USER@|$LOGIN_USER|g" -e "s|@MAIL_USER@|$MAIL_USER|g" \
    -e "s|@MAIL_UID@|$MAIL_UID|g" -e "s|@MAIL_GID@|$MAIL_GID|g" "$1" >"$2"
}

start() {
  if our_pid >/dev/null && greets "$IMAP_PORT"; then
    log "already running (pid $(our_pid), config $CONF)"
    return 0
  fi
  command -v dovecot >/dev/null || die "dovecot is not installed: run infra/setup.sh (apt-get install dovecot-core dovecot-imapd dovecot-pop3d)"
  command -v openssl >/dev/null || die "openssl is not installed: run infra/setup.sh"
  local port
  for port in "$IMAP_PORT" "$IMAPS_PORT" "$POP3_PORT" "$POP3S_PORT"; do
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
      die "port $port is already in use (not by our dovecot); set MAILROOM_DOVECOT_*_PORT"
    fi
  done
  # Login processes refuse to run as root: as root, logins run as dovenull and mail as dovecot;
  # as any other user, everything runs as that user.
  if [[ $EUID -eq 0 ]]; then
    LOGIN_USER=dovenull MAIL_USER=dovecot
  else
    LOGIN_USER=$(id -un) MAIL_USER=$(id -un)
  fi
  MAIL_UID=$(id -u "$MAIL_USER") MAIL_GID=$(id -g "$MAIL_USER")
  mkdir -p "$DIR/base" "$DIR/state" "$DIR/mail"
  chmod 755 "$DIR" "$DIR/mail"
  [[ $EUID -eq 0 ]] && chown "$MAIL_USER:" "$DIR/mail"
  make_tls
  render "$ROOT/infra/dovecot/dovecot.conf.in" "$CONF"
  render "$ROOT/infra/dovecot/oauth2.conf.ext.in" "$DIR/oauth2.conf.ext"
  mkdir -p "$DIR/users.d"
  chmod 755 "$DIR/users.d"
  chmod 644 "$DIR/oauth2.conf.ext"
  : >"$DIR/dovecot.log"
  dovecot -c "$CONF" || { tail -n 20 "$DIR/dovecot.log" >&2; die "dovecot did not start"; }
  local i
  for ((i = 0; i < 100; i++)); do # ~10 s
    if greets "$IMAP_PORT" && greets "$POP3_PORT"; then
      log "up: imap $IMAP_PORT, imaps $IMAPS_PORT, pop3 $POP3_PORT, pop3s $POP3S_PORT (pid $(cat "$PIDFILE"), dir $DIR)"
      return 0
    fi
    sleep 0.1
  done
  log "no greeting on port $IMAP_PORT within 10 s; log $DIR/dovecot.log:"
  tail -n 20 "$DIR/dovecot.log" >&2
  stop
  exit 1
}

# shellcheck source=infra/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"

# Dovecot owns its pid file (it removes it itself) and gets ~10 s to exit.
stop() {
  local pid
  if ! pid=$(our_pid); then
    return 0
  fi
  stop_pid "$pid" 100
  log "stopped (pid $pid)"
}

env_lines() {
  printf 'export MAILROOM_TEST_DOVECOT_CONF=%q\n' "$CONF"
  printf 'export MAILROOM_TEST_DOVECOT_USERS=%q\n' "$DIR/users.d"
  printf 'export MAILROOM_TEST_MAIL_HOST=%q\n' localhost
  printf 'export MAILROOM_TEST_MAIL_CA=%q\n' "$DIR/tls/ca.crt"
  printf 'export MAILROOM_TEST_IMAP_PORT=%q\n' "$IMAP_PORT"
  printf 'export MAILROOM_TEST_IMAPS_PORT=%q\n' "$IMAPS_PORT"
  printf 'export MAILROOM_TEST_POP3_PORT=%q\n' "$POP3_PORT"
  printf 'export MAILROOM_TEST_POP3S_PORT=%q\n' "$POP3S_PORT"
  printf '%s\n' "# IMAP $IMAP_PORT and POP3 $POP3_PORT offer STARTTLS/STLS; $IMAPS_PORT and $POP3S_PORT are implicit TLS." \
    "# Trust the CA in \$MAILROOM_TEST_MAIL_CA (certificate for localhost and 127.0.0.1)." \
    "# Add a user (read at its first login):  echo 'ana:{PLAIN}secret::::::' > \$MAILROOM_TEST_DOVECOT_USERS/ana" \
    "# Put mail in:     doveadm -c \$MAILROOM_TEST_DOVECOT_CONF save -u ana < message.eml" \
    "# Look at it:      doveadm -c \$MAILROOM_TEST_DOVECOT_CONF mailbox status -u ana 'messages unseen uidvalidity' INBOX" \
    "# XOAUTH2: register a client at the authority with \"mailbox\": \"ana\" (POST \$MAILROOM_TEST_IDENTITY_URL/_emulator/clients)."
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  url) echo "imap://localhost:$IMAP_PORT" ;;
  env) env_lines ;;
  *)
    echo "usage: $0 start|stop|url|env" >&2
    exit 2
    ;;
esac
