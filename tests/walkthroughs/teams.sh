#!/usr/bin/env bash
# The README walkthrough: Teams chat through the agent API with curl, against the Graph emulator.
#
# Starts what it needs (the Graph emulator unless it already runs; `mailroom serve` on a fresh data
# directory), walks the flow, checks every answer, and stops what it started. Exits non-zero on the
# first failure.
#
#   bash tests/walkthroughs/teams.sh   (infra/test.sh runs it; the README section "Chat with Teams users" is the same flow)
#
# Environment (all optional):
#   MAILROOM_ROOT  the checkout (default: the one holding this script)
#   MAILROOM_BIN   the mailroom binary (default $CARGO_TARGET_DIR/debug/mailroom, built if missing)
#   DATA           the data directory, emptied first (default: a new temporary directory)
#   API_PORT, SMTP_PORT (default 28080, 22525); MAILROOM_GRAPH_PORT (default 45710)
set -euo pipefail

ROOT=${MAILROOM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}
MAILROOM=${MAILROOM_BIN:-$CARGO_TARGET_DIR/debug/mailroom}
DATA=${DATA:-$(mktemp -d)/data}
API_PORT=${API_PORT:-28080}
SMTP_PORT=${SMTP_PORT:-22525}
GRAPH=http://127.0.0.1:${MAILROOM_GRAPH_PORT:-45710}
API=http://127.0.0.1:$API_PORT/v1
LOG=$DATA.serve.log

# step, fail, expect, call, stop_serve, ensure_mailroom
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# wait_update FILTER WHAT: long-polls /teams/updates from $AFTER until a message matching the jq
# FILTER arrives (at most ~30 s); prints that page, sets UPDATES and moves AFTER past it.
wait_update() {
  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    UPDATES=$(call "$API/teams/updates?after=$AFTER&wait=10" -H "Authorization: Bearer $ANA")
    AFTER=$(jq -r .next_after <<<"$UPDATES")
    if jq -e ".messages | any($1)" >/dev/null <<<"$UPDATES"; then
      echo "$UPDATES"
      return 0
    fi
  done
  fail "$2 did not arrive within 30 s"
}

SERVE_PID=
STARTED_GRAPH=
cleanup() {
  local rc=$?
  stop_serve "$rc"
  if [[ -n $STARTED_GRAPH ]]; then bash "$ROOT/infra/graph.sh" stop || true; fi
  exit "$rc"
}
trap cleanup EXIT

cd "$ROOT"
ensure_mailroom

step "the Graph emulator"
if ! curl -fsS -o /dev/null --max-time 1 "$GRAPH/health" 2>/dev/null; then
  bash infra/graph.sh start
  STARTED_GRAPH=1
fi

step "a Microsoft 365 tenant with two Teams users (emulator control)"
# Ana is the contact-centre agent (same email as agent `ana` of the demo configuration); Alex is a
# colleague outside the contact centre.
TENANT_JSON=$(call -X POST "$GRAPH/_emulator/graph/tenants" -H 'Content-Type: application/json' -d '{"users": [
  {"displayName": "Ana Lima",   "mail": "ana@example.com",        "jobTitle": "Customer Service Agent"},
  {"displayName": "Alex Weber", "mail": "alex.weber@example.com", "jobTitle": "Claims Handler", "department": "Claims"}]}')
TENANT=$(jq -r .tenant <<<"$TENANT_JSON")
CLIENT_ID=$(jq -r .client_id <<<"$TENANT_JSON")
CLIENT_SECRET=$(jq -r .client_secret <<<"$TENANT_JSON")
echo "tenant $TENANT, client $CLIENT_ID"

step "mailroom serve with Teams"
rm -rf "$DATA" "$LOG"
mkdir -p "$DATA"
MAILROOM_GRAPH_TENANT=$TENANT \
  MAILROOM_GRAPH_CLIENT_ID=$CLIENT_ID \
  MAILROOM_GRAPH_CLIENT_SECRET=$CLIENT_SECRET \
  MAILROOM_GRAPH_URL=$GRAPH/v1.0 \
  MAILROOM_GRAPH_AUTHORITY=$GRAPH \
  MAILROOM_TEAMS_PUBLIC_URL=http://127.0.0.1:$API_PORT \
  "$MAILROOM" --data-dir "$DATA" serve --api-addr "127.0.0.1:$API_PORT" --smtp-addr "127.0.0.1:$SMTP_PORT" \
  >"$LOG" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null --max-time 1 "$API/health" 2>/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || fail "mailroom serve exited"
  sleep 0.2
done
curl -fsS -o /dev/null "$API/health" || fail "the API does not answer at $API"
cat "$LOG"

ADA=$("$MAILROOM" --data-dir "$DATA" token --agent ada) # admin
ANA=$("$MAILROOM" --data-dir "$DATA" token --agent ana) # agent

step "1. the admin syncs the directory from Microsoft Graph"
SYNC=$(call -X POST "$API/contacts/sync" -H "Authorization: Bearer $ADA")
echo "$SYNC"
expect "$SYNC" '.users == 2' "the sync should store both Teams users"

step "2. contacts: Teams users, merged with contact-centre agents by email"
CONTACTS=$(call "$API/contacts?search=alex" -H "Authorization: Bearer $ANA")
echo "$CONTACTS" | jq -c '.contacts[] | {id, name, job_title, kinds: [.identities[].kind], presence}'
expect "$CONTACTS" '.contacts[0].name == "Alex Weber"' "Alex should be found"
ALEX_CONTACT=$(jq -r '.contacts[0].id' <<<"$CONTACTS")
TEAMS_ONLY=$(call "$API/contacts?identity=teams" -H "Authorization: Bearer $ANA")
echo "$TEAMS_ONLY" | jq -c '{total, sources, names: [.contacts[].name]}'
expect "$TEAMS_ONLY" '.total == 2' "two contacts have a Teams identity"

step "3. Ana connects her Teams account"
CONN=$(call "$API/me/teams" -H "Authorization: Bearer $ANA")
echo "$CONN"
expect "$CONN" '.status == "not_connected"' "not connected yet"
START=$(call -X POST "$API/me/teams/connect" -H "Authorization: Bearer $ANA")
echo "$START" | jq -c '{authorize_url: (.authorize_url[:80] + "..."), expires_at}'
AUTHORIZE_URL=$(jq -r .authorize_url <<<"$START")
# The browser's part: Microsoft's sign-in (the emulator signs in the login_hint, ana@example.com) redirects
# to /v1/teams/oauth/callback, which exchanges the code. curl -L follows the redirect.
CALLBACK=$(call -L "$AUTHORIZE_URL")
echo "$CALLBACK"
expect "$CALLBACK" '.status == "connected"' "the callback should connect Ana"
CONN=$(call "$API/me/teams" -H "Authorization: Bearer $ANA")
echo "$CONN"
expect "$CONN" '.status == "connected" and .teams_user_name == "Ana Lima"' "Ana is connected"

step "4. Ana starts a chat with Alex and writes first"
CHAT=$(call -X POST "$API/teams/chats" -H "Authorization: Bearer $ANA" -H 'Content-Type: application/json' \
  -d "{\"contact_id\": \"$ALEX_CONTACT\"}")
echo "$CHAT"
expect "$CHAT" '.state == "awaiting_first_message" and .peer_name == "Alex Weber"' "a new chat"
CHAT_ID=$(jq -r .chat_id <<<"$CHAT")
# Until Ana's first message there is no chat in Teams: Alex cannot write first (playing the Teams user).
FIRST=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$GRAPH/_emulator/graph/$TENANT/send" \
  -H 'Content-Type: application/json' -d '{"from": "alex.weber@example.com", "to": "ana@example.com", "text": "first!"}')
[[ $FIRST == 404 ]] || fail "Alex could write before Ana (HTTP $FIRST)"
SENT=$(call -X POST "$API/teams/chats/$CHAT_ID/messages" -H "Authorization: Bearer $ANA" \
  -H 'Content-Type: application/json' -d '{"text": "Hello Alex, can you check claim 42?"}')
echo "$SENT"
expect "$SENT" '.direction == "outbound" and .kind == "message"' "sent"
AFTER=$(jq -r .seq <<<"$SENT")
CHAT=$(call "$API/teams/chats/$CHAT_ID" -H "Authorization: Bearer $ANA")
expect "$CHAT" '.chat.state == "open"' "the chat is open after the first message"

step "5. Alex replies in Teams (playing the Teams user: emulator control)"
REPLY=$(call -X POST "$GRAPH/_emulator/graph/$TENANT/send" -H 'Content-Type: application/json' \
  -d '{"from": "alex.weber@example.com", "to": "ana@example.com", "text": "<p>Hi Ana, looking now</p>"}')
REPLY_ID=$(jq -r .id <<<"$REPLY")      # Graph's message id
GRAPH_CHAT=$(jq -r .chatId <<<"$REPLY") # Graph's chat id (19:..._...@unq.gbl.spaces)
echo "Teams message $REPLY_ID in $GRAPH_CHAT"

step "6. Ana receives the reply (long poll)"
wait_update ".message_id == \"$REPLY_ID\" and .direction == \"inbound\"" "the reply"

step "7. Alex edits his reply (playing the Teams user)"
call -X POST "$GRAPH/_emulator/graph/$TENANT/edit" -H 'Content-Type: application/json' \
  -d "{\"chat_id\": \"$GRAPH_CHAT\", \"message_id\": \"$REPLY_ID\", \"user\": \"alex.weber@example.com\", \"text\": \"<p>Hi Ana, claim 42 is approved</p>\"}" >/dev/null
wait_update ".message_id == \"$REPLY_ID\" and .edited_at != null and (.content | contains(\"approved\"))" "the edit"

step "8. Alex deletes his reply (playing the Teams user)"
call -X POST "$GRAPH/_emulator/graph/$TENANT/delete" -H 'Content-Type: application/json' \
  -d "{\"chat_id\": \"$GRAPH_CHAT\", \"message_id\": \"$REPLY_ID\", \"user\": \"alex.weber@example.com\"}" >/dev/null
wait_update ".message_id == \"$REPLY_ID\" and .deleted_at != null" "the deletion"

step "9. the whole chat, as Ana sees it"
CHAT=$(call "$API/teams/chats/$CHAT_ID" -H "Authorization: Bearer $ANA")
echo "$CHAT" | jq -c '.chat.state, (.messages[] | {direction, from: .from.name, content, created_at, edited_at, deleted_at})'
expect "$CHAT" '.messages | length == 2' "two messages in the chat"
expect "$CHAT" ".messages | any(.message_id == \"$REPLY_ID\" and .edited_at != null and .deleted_at != null)" \
  "the reply shows its edit and deletion times"

printf '\nOK: directory sync, Teams connection, chat, reply, edit and deletion all work through the agent API\n'
