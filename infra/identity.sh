#!/usr/bin/env bash
# The local Microsoft-identity-shaped token authority (infra/emulators/identity.py) on loopback: OAuth2
# client credentials for the mailbox tests, and RFC 7662 introspection for dovecot's oauth2 passdb.
#   infra/identity.sh start   start it (no-op when already running on this port); waits until it answers
#   infra/identity.sh stop    stop it (no-op when not running)
#   infra/identity.sh url     print its base URL (the "authority" of an oauth2 channel)
#   infra/identity.sh env     print the `export` lines the tests need (test.sh evals this)
# Environment: MAILROOM_CACHE (default ~/.cache/mailroom), MAILROOM_IDENTITY_PORT (default 45680),
#              MAILROOM_PYTHON (default python3; only the standard library is used).
# Pid file and log: $MAILROOM_CACHE/run/identity-<port>.{pid,log}
# The start/stop/url machinery is shared with the other Python emulators: infra/lib/python-emulator.sh.
# NAME, PORT_VAR and DEFAULT_PORT are read by the library.
# shellcheck disable=SC2034 source-path=SCRIPTDIR
set -euo pipefail

NAME=identity
PORT_VAR=MAILROOM_IDENTITY_PORT
DEFAULT_PORT=45680
source "$(dirname "${BASH_SOURCE[0]}")/lib/python-emulator.sh"

print_env() { printf 'export MAILROOM_TEST_IDENTITY_URL=%q\n' "$URL"; }

emulator_main "$@"
