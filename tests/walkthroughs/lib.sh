# shellcheck shell=bash
# Helpers shared by the README walkthroughs (sourced): output, checks on JSON answers, curl that fails
# on a non-2xx status, and stopping `mailroom serve` with its log shown when the walkthrough failed.
# The caller sets LOG (the serve log) and SERVE_PID once serve runs.

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
# expect JSON FILTER WHAT: the jq FILTER must be true of JSON.
expect() { jq -e "$2" >/dev/null <<<"$1" || fail "$3: $1"; }
# call_status STATUS CURL-ARGS...: runs curl, prints the body, fails unless the status matches STATUS
# (a glob: 400, 2*).
call_status() {
  local want=$1 out status
  shift
  out=$(curl -sS -w '\n%{http_code}' "$@") || fail "curl $*"
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  # shellcheck disable=SC2053 # STATUS is a glob on purpose
  [[ $status == $want ]] || fail "HTTP $status (expected $want) from curl $*: $out"
  printf '%s' "$out"
}
# Runs curl, prints the body, fails on a non-2xx status.
call() { call_status '2*' "$@"; }

# stop_serve RC: stops `mailroom serve` (Ctrl-C, then by force after ~5 s); when RC is not 0, shows
# the end of its log.
stop_serve() {
  if [[ -n ${SERVE_PID:-} ]] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -INT "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVE_PID" 2>/dev/null || true
  fi
  if (($1 != 0)) && [[ -f $LOG ]]; then
    echo "--- last lines of the mailroom serve log ($LOG):" >&2
    tail -n 30 "$LOG" >&2
  fi
}

# ensure_mailroom: builds the binary at $MAILROOM when it is missing.
ensure_mailroom() {
  if [[ ! -x $MAILROOM ]]; then
    step "building mailroom"
    cargo build -p mailroom-shared --bin mailroom
  fi
}
