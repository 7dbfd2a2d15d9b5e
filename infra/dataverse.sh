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
# The start/stop/url machinery is shared with the other Python emulators: infra/lib/python-emulator.sh.
# NAME, PORT_VAR and DEFAULT_PORT are read by the library.
# shellcheck disable=SC2034 source-path=SCRIPTDIR
set -euo pipefail

NAME=dataverse
PORT_VAR=MAILROOM_DATAVERSE_PORT
DEFAULT_PORT=45690
source "$(dirname "${BASH_SOURCE[0]}")/lib/python-emulator.sh"

# The emulator's built-in environment: tenant, and the client whose application user holds every privilege the
# handoff needs (mailroom-limited lacks prvCreateIncident).
print_env() {
  printf 'export MAILROOM_TEST_DATAVERSE_URL=%q\n' "$URL"
  printf 'export MAILROOM_TEST_DATAVERSE_TENANT=%q\n' mailroom-demo
  printf 'export MAILROOM_TEST_DATAVERSE_CLIENT_ID=%q\n' mailroom-handoff
  printf 'export MAILROOM_TEST_DATAVERSE_CLIENT_SECRET=%q\n' mailroom-handoff-secret
}

emulator_main "$@"
