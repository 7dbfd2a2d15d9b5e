#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run): installs the tooling, starts the test servers on loopback,
# then runs every check. Each check runs even if an earlier one failed; the exit status is non-zero if any failed.
#
#   bash infra/test.sh
#
# Environment:
#   MAILROOM_CACHE          cache root shared with infra/setup.sh (default ~/.cache/mailroom)
#   CARGO_TARGET_DIR        default $MAILROOM_CACHE/target (outside the clone so CI stays warm)
#   MAILROOM_SERVERS        servers to start, each an infra/<name>.sh with start|stop|env
#                           (default: "moto identity dovecot dataverse smtp_sink graph")
#   MAILROOM_SKIP_CARGO=1   skip fmt, clippy and the Rust tests (check the setup, servers and template only)
#   MAILROOM_MOTO_PORT      moto's port (default 45660)
#
# What the tests get (exported): MAILROOM_TEST_MOTO_URL, MAILROOM_CORPORA_DIR, MAILROOM_REQUIRE_SERVERS=1 (a test
# whose server is missing fails instead of skipping), and dummy AWS credentials with a region, so nothing here can
# reach a real AWS account.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export MAILROOM_CACHE=${MAILROOM_CACHE:-$HOME/.cache/mailroom}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MAILROOM_CACHE/target}
export MAILROOM_CORPORA_DIR="$MAILROOM_CACHE/corpora"
export MAILROOM_REQUIRE_SERVERS=1
export SAM_CLI_TELEMETRY=0
export AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
read -r -a SERVERS <<<"${MAILROOM_SERVERS:-moto identity dovecot dataverse smtp_sink graph}"
VENV="$MAILROOM_CACHE/venv"

section() { printf '\n==== %s ====\n' "$*"; }

# ---------------------------------------------------------------- servers
STARTED=()
# shellcheck disable=SC2317 # called from the EXIT trap
stop_servers() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    bash "$ROOT/infra/${STARTED[i]}.sh" stop || true
  done
  STARTED=()
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "setup"
bash "$ROOT/infra/setup.sh"

section "servers: ${SERVERS[*]}"
for server in "${SERVERS[@]}"; do
  STARTED+=("$server") # before start: a half-started server is stopped too
  bash "$ROOT/infra/$server.sh" start
  env_lines=$(bash "$ROOT/infra/$server.sh" env)
  eval "$env_lines"
  printf '%s\n' "$env_lines"
done

# ---------------------------------------------------------------- checks
RESULTS=()
FAILED=0
step() { # name command...
  local name=$1 start=$SECONDS rc=0
  shift
  section "$name"
  "$@" || rc=$?
  if [[ $rc -eq 0 ]]; then
    RESULTS+=("ok      $name ($((SECONDS - start)) s)")
  else
    RESULTS+=("FAILED  $name ($((SECONDS - start)) s, exit $rc)")
    FAILED=1
  fi
}

# Keeps the test runner's output for the closing count.
TEST_LOG=$(mktemp)
run_logged() { "$@" 2>&1 | tee "$TEST_LOG"; }

# Cheap checks first; the test runner goes last so its summary is the run's closing lines.
if [[ ${MAILROOM_SKIP_CARGO:-0} != 1 ]]; then
  step "cargo fmt" cargo fmt --all --check
fi
step "sam validate --lint" "$VENV/bin/sam" validate --lint --template-file template.yaml
if [[ ${MAILROOM_SKIP_CARGO:-0} != 1 ]]; then
  step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
  if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests.
    step "cargo test --doc" cargo test --workspace --doc --locked
    step "cargo nextest" run_logged cargo nextest run --workspace --locked --no-fail-fast
  else
    step "cargo test" run_logged cargo test --workspace --locked --no-fail-fast
  fi
  # The README's walkthroughs, with curl against `mailroom serve` (built by the tests above) and the
  # servers they need.
  walkthrough() { # name server
    if [[ " ${SERVERS[*]} " == *" $2 "* ]]; then
      step "walkthrough: $1" bash "tests/walkthroughs/$1.sh"
    fi
  }
  walkthrough outbound smtp_sink
  walkthrough crm dataverse
  walkthrough teams graph
else
  section "cargo steps skipped (MAILROOM_SKIP_CARGO=1)"
fi

stop_servers
section "summary"
printf '%s\n' "${RESULTS[@]}"
# The run's closing line: the test count, in the plain form any CI reader understands.
counts=$(grep -Eo '[0-9]+ tests run: [0-9]+ passed(, [0-9]+ failed)?' "$TEST_LOG" | tail -1 || true)
if [[ -n $counts ]]; then
  passed=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$counts")
  failed=$(grep -Eo '[0-9]+ failed' <<<"$counts" | grep -Eo '[0-9]+' || echo 0)
  echo "tests: $passed passed, $failed failed"
fi
rm -f "$TEST_LOG"
exit "$FAILED"
