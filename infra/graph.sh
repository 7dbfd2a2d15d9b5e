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
# The start/stop/url machinery is shared with the other Python emulators: infra/lib/python-emulator.sh.
# NAME, PORT_VAR and DEFAULT_PORT are read by the library.
# shellcheck disable=SC2034 source-path=SCRIPTDIR
set -euo pipefail

NAME=graph
PORT_VAR=MAILROOM_GRAPH_PORT
DEFAULT_PORT=45710
source "$(dirname "${BASH_SOURCE[0]}")/lib/python-emulator.sh"

# The emulator's built-in tenant and its app (tests create isolated tenants of their own on it).
print_env() {
  printf 'export MAILROOM_TEST_GRAPH_URL=%q\n' "$URL"
  printf 'export MAILROOM_TEST_GRAPH_TENANT=%q\n' mailroom-demo
  printf 'export MAILROOM_TEST_GRAPH_CLIENT_ID=%q\n' mailroom-teams
  printf 'export MAILROOM_TEST_GRAPH_CLIENT_SECRET=%q\n' mailroom-teams-secret
}

emulator_main "$@"
