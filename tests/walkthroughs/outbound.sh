#!/usr/bin/env bash
# The README walkthrough: outgoing mail through the agent API with curl, to the SMTP sink.
#
# The admin gives a channel (`support`) its own SMTP server (the sink, STARTTLS) through the admin API while
# `mailroom serve` runs; a customer's email is accepted, replied to, forwarded, transferred, ended; then a
# follow-up and a new email. Every message must arrive
# at the sink well formed (checked with Python's `email` package), and the customer's answer to the reply
# must thread back into the same interaction.
#
# Starts what it needs (the SMTP sink unless it already runs; `mailroom serve` on a fresh data directory),
# checks every answer, and stops what it started. Exits non-zero on the first failure.
#
#   bash tests/walkthroughs/outbound.sh   (the README section "A channel with its own SMTP server" is the same flow)
#
# Environment (all optional):
#   MAILROOM_ROOT  the checkout (default: the one holding this script)
#   MAILROOM_BIN   the mailroom binary (default $CARGO_TARGET_DIR/debug/mailroom, built if missing)
#   DATA           the data directory, emptied first (default: a new temporary directory)
#   API_PORT, SMTP_PORT (default 28180, 22625); MAILROOM_SMTP_SINK_PORT (default 45701, see infra/smtp_sink.sh)
set -euo pipefail

ROOT=${MAILROOM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}
MAILROOM=${MAILROOM_BIN:-$CARGO_TARGET_DIR/debug/mailroom}
DATA=${DATA:-$(mktemp -d)/data}
API_PORT=${API_PORT:-28180}
SMTP_PORT=${SMTP_PORT:-22625}
API=http://127.0.0.1:$API_PORT # as in the README's section 2: routes are $API/v1/...
SMTP=smtp://127.0.0.1:$SMTP_PORT
CONFIG=$DATA.mailroom.toml
LOG=$DATA.serve.log
WORK=$DATA.work # the customer's emails, the checker's input

# step, fail, expect, call, stop_serve, ensure_mailroom
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# auth TOKEN: the curl arguments for a JSON request as TOKEN, one a line (for mapfile).
auth() { printf '%s\n' -H "Authorization: Bearer $1" -H 'Content-Type: application/json'; }

# wait_offer TOKEN WHAT: polls TOKEN's offers (at most ~20 s) until one is there; prints its interaction id.
wait_offer() {
  local deadline=$((SECONDS + 20)) offers
  while ((SECONDS < deadline)); do
    offers=$(call "$API/v1/me/offers" -H "Authorization: Bearer $1")
    if jq -e '.offers | length > 0' >/dev/null <<<"$offers"; then
      jq -r '.offers[0].interaction_id' <<<"$offers"
      return 0
    fi
    sleep 0.2
  done
  fail "$2: no offer within 20 s"
}

SERVE_PID=
STARTED_SINK=
cleanup() {
  local rc=$?
  stop_serve "$rc"
  if [[ -n $STARTED_SINK ]]; then bash "$ROOT/infra/smtp_sink.sh" stop || true; fi
  exit "$rc"
}
trap cleanup EXIT

cd "$ROOT"
ensure_mailroom

step "the SMTP sink"
eval "$(bash infra/smtp_sink.sh env)" # MAILROOM_TEST_SMTP_CA, MAILROOM_TEST_SMTP_MAILDIR, ..._STARTTLS_PORT
if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MAILROOM_TEST_SMTP_STARTTLS_PORT" 2>/dev/null; then
  echo "already running"
else
  bash infra/smtp_sink.sh start
  STARTED_SINK=1 # so stop it at the end
fi
[[ -f $MAILROOM_TEST_SMTP_CA ]] || fail "no sink CA at $MAILROOM_TEST_SMTP_CA"
echo "sink: localhost:$MAILROOM_TEST_SMTP_STARTTLS_PORT (STARTTLS), mail in $MAILROOM_TEST_SMTP_MAILDIR"

step "1. the configuration: the demo's channels, queues and agents (support sends through the internal server)"
rm -rf "$DATA" "$LOG" "$CONFIG" "$WORK"
mkdir -p "$DATA" "$WORK"
"$MAILROOM" config >"$CONFIG"
MR=("$MAILROOM" --config "$CONFIG" --data-dir "$DATA")
# The sink keeps every message it ever got (other tests and earlier runs too): only newer files count.
(cd "$MAILROOM_TEST_SMTP_MAILDIR" && ls) >"$WORK/sink-before.txt"

step "mailroom serve, trusting the sink's test CA"
MAILROOM_SMTP_CA_FILE=$MAILROOM_TEST_SMTP_CA \
  "${MR[@]}" serve --api-addr "127.0.0.1:$API_PORT" --smtp-addr "127.0.0.1:$SMTP_PORT" >"$LOG" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null --max-time 1 "$API/v1/health" 2>/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || fail "mailroom serve exited"
  sleep 0.2
done
curl -fsS -o /dev/null "$API/v1/health" || fail "the API does not answer at $API"
cat "$LOG"

ADA=$("${MR[@]}" token --agent ada) # admin
ANA=$("${MR[@]}" token --agent ana) # agent, queue support
BEN=$("${MR[@]}" token --agent ben) # agent, queues support and billing
SAM=$("${MR[@]}" token --agent sam) # supervisor
mapfile -t A_ADA < <(auth "$ADA")
mapfile -t A_ANA < <(auth "$ANA")
mapfile -t A_BEN < <(auth "$BEN")

step "2. the admin gives the channel its own SMTP server (the sink), sets its password (write-only) and tests it"
OUTGOING=$(call "$API/v1/admin/channels/support/outgoing" -H "Authorization: Bearer $ADA")
echo "$OUTGOING"
expect "$OUTGOING" '.server.kind == "internal" and .password_set == null' "support should start on the internal server"
VERSION=$(jq -r .version <<<"$OUTGOING")
# A mistake is a 400 naming the field; nothing is saved.
BAD=$(call_status 400 -X PUT "$API/v1/admin/channels/support/outgoing" "${A_ADA[@]}" \
  -d '{"server": {"kind": "smtp", "host": "localhost", "port": 0, "security": "starttls"}}')
echo "$BAD"
expect "$BAD" '.error.field == "server.port"' "the 400 should name server.port"
# The sink's STARTTLS port; the login defaults to the channel address. agent_accounts: agents may also send
# as themselves with their own login (profile).
SET=$(call -X PUT "$API/v1/admin/channels/support/outgoing?version=$VERSION" "${A_ADA[@]}" -d '{
  "server": {"kind": "smtp", "host": "localhost", "port": '"$MAILROOM_TEST_SMTP_STARTTLS_PORT"', "security": "starttls"},
  "agent_accounts": true}')
echo "$SET"
expect "$SET" ".server.kind == \"smtp\" and .server.port == $MAILROOM_TEST_SMTP_STARTTLS_PORT
  and .server.login == \"support@example.com\" and .agent_accounts == true and .password_set == false
  and .version == $((VERSION + 1))" "the SMTP server should be saved, with a new version"
# A change made on a stale version is refused.
call_status 409 -X PUT "$API/v1/admin/channels/support/outgoing?version=$VERSION" "${A_ADA[@]}" \
  -d '{"server": {"kind": "internal"}}' >/dev/null
call -X PUT "$API/v1/admin/channels/support/outgoing/password" "${A_ADA[@]}" -d '{"password": "support-secret"}'
OUTGOING=$(call "$API/v1/admin/channels/support/outgoing" -H "Authorization: Bearer $ADA")
echo "$OUTGOING"
expect "$OUTGOING" '.server.kind == "smtp" and .password_set == true' "the server and its password should be set"
expect "$OUTGOING" 'tostring | contains("support-secret") | not' "the password must never be read back"
TEST=$(call -X POST "$API/v1/admin/channels/support/test-outgoing" -H "Authorization: Bearer $ADA")
echo "$TEST"
expect "$TEST" '.ok == true' "test-outgoing should reach the sink"

step "3. ana and ben come in; a customer's email arrives over SMTP"
call -X PUT "$API/v1/me/presence" "${A_ANA[@]}" -d '{"presence":"available"}' >/dev/null
call -X PUT "$API/v1/me/presence" "${A_BEN[@]}" -d '{"presence":"available"}' >/dev/null
FIXTURE=tests/fixtures/email/new/billing-invoice-refund-question.eml
CUSTOMER_MSGID=$(sed -n 's/^Message-ID: <\(.*\)>\r\{0,1\}$/\1/p' "$FIXTURE")
curl -sS --url "$SMTP" --mail-from liam.carter@example.org --mail-rcpt support@example.com \
  --upload-file "$FIXTURE" || fail "the SMTP listener refused the customer's email"

step "the offer goes to ana (the longest idle); she accepts"
ID=$(wait_offer "$ANA" "ana")
echo "interaction $ID"
ACCEPT=$(call -X POST "$API/v1/me/offers/$ID/accept" -H "Authorization: Bearer $ANA")
echo "$ACCEPT" | jq -c '{state: .state, screen_pop: (.screen_pop | {matches, case: .case.status})}' 2>/dev/null || echo "$ACCEPT"

step "4. ana replies (with an Idempotency-Key; the retry sends nothing new)"
REPLY=$(call -X POST "$API/v1/interactions/$ID/reply" "${A_ANA[@]}" -H 'Idempotency-Key: reply-1' \
  -d '{"text": "Dear Liam,\n\nWe refunded the duplicate payment for invoice INV-2025-0417."}')
echo "$REPLY"
expect "$REPLY" '.kind == "reply" and .state == "queued" and .repeated == false' "the reply is queued"
REPLY_MSGID=$(jq -r .message_id <<<"$REPLY")
AGAIN=$(call -X POST "$API/v1/interactions/$ID/reply" "${A_ANA[@]}" -H 'Idempotency-Key: reply-1' \
  -d '{"text": "Dear Liam,\n\nWe refunded the duplicate payment for invoice INV-2025-0417."}')
echo "$AGAIN"
expect "$AGAIN" ".repeated == true and .message_id == \"$REPLY_MSGID\"" "the retried reply is the same message"

step "5. ana forwards it to the claims department"
FORWARD=$(call -X POST "$API/v1/interactions/$ID/forward" "${A_ANA[@]}" \
  -d '{"to": ["claims@example.net"], "text": "Please check the duplicate charge."}')
echo "$FORWARD"
expect "$FORWARD" '.kind == "forward"' "the forward is queued"
FORWARD_MSGID=$(jq -r .message_id <<<"$FORWARD")

step "6. ana transfers it to queue billing; ben accepts it there, creates the contact and ends it"
call -X POST "$API/v1/interactions/$ID/transfer" "${A_ANA[@]}" -d '{"queue":"billing"}' >/dev/null
BEN_ID=$(wait_offer "$BEN" "ben in billing")
[[ $BEN_ID == "$ID" ]] || fail "ben was offered $BEN_ID, not $ID"
call -X POST "$API/v1/me/offers/$ID/accept" -H "Authorization: Bearer $BEN" >/dev/null
CONTACT=$(call -X POST "$API/v1/interactions/$ID/contact/new" "${A_BEN[@]}" -d '{"first_name":"Liam","last_name":"Carter"}')
echo "$CONTACT" | jq -c '{stage, ticket_number: (.case.ticket_number // .ticket_number)}' 2>/dev/null || echo "$CONTACT"
call -X POST "$API/v1/interactions/$ID/end" -H "Authorization: Bearer $BEN" >/dev/null
echo "ended by ben"

step "7. ben sends a follow-up on the ended interaction"
FOLLOW=$(call -X POST "$API/v1/interactions/$ID/follow-ups" "${A_BEN[@]}" \
  -d '{"subject": "Did the refund arrive?", "text": "Just checking in."}')
echo "$FOLLOW"
expect "$FOLLOW" '.kind == "follow_up"' "the follow-up is queued"
FOLLOW_MSGID=$(jq -r .message_id <<<"$FOLLOW")
# A header cannot be smuggled in through a field: a subject with a line break is refused.
call_status 422 -X POST "$API/v1/interactions/$ID/follow-ups" "${A_BEN[@]}" \
  -d '{"subject": "Hello\r\nBcc: evil@example.net", "text": "x"}'
echo

step "8. ana writes a new email (a new interaction, hers) and ends it"
NEW=$(call -X POST "$API/v1/emails" "${A_ANA[@]}" -d '{
  "channel": "support", "to": [{"address": "bob@example.org", "name": "Bob"}],
  "subject": "Your refund", "text": "Your refund was paid today."}')
echo "$NEW"
expect "$NEW" '.kind == "new_email"' "the new email is queued"
NEW_ID=$(jq -r .interaction_id <<<"$NEW")
NEW_MSGID=$(jq -r .message_id <<<"$NEW")
[[ $NEW_ID != "$ID" ]] || fail "the new email should open a new interaction"
call -X POST "$API/v1/interactions/$NEW_ID/end" -H "Authorization: Bearer $ANA" >/dev/null
echo "interaction $NEW_ID ended by ana"

step "9. every message arrives at the sink, well formed"
# check_sink [--wait]: finds each message by its Message-ID among the sink's files and checks it.
check_sink() {
  python3 - "$MAILROOM_TEST_SMTP_MAILDIR" "$1" "$WORK/sink-before.txt" <<PY
import email, email.policy, email.utils, glob, json, os, re, sys
maildir, mode = sys.argv[1], sys.argv[2]
before = set(open(sys.argv[3]).read().split())
want = {"reply": "$REPLY_MSGID", "forward": "$FORWARD_MSGID", "follow_up": "$FOLLOW_MSGID", "new_email": "$NEW_MSGID"}
found, copies = {}, {}
for path in sorted(glob.glob(os.path.join(maildir, "*.eml"))):
    if os.path.basename(path) in before:
        continue
    meta = path[:-4] + ".json"
    if not os.path.exists(meta):  # written last: without it the message may be incomplete
        continue
    raw = open(path, "rb").read()
    head = raw.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[0]
    m = re.search(rb"^Message-ID:\s*<([^>]+)>", head, re.I | re.M)
    if m and m.group(1).decode() in want.values():
        kind = [k for k, v in want.items() if v == m.group(1).decode()][0]
        found.setdefault(kind, (path, raw, json.load(open(meta))))
        copies[kind] = copies.get(kind, 0) + 1
if mode == "wait":
    sys.exit(0 if len(found) == len(want) else 1)

problems = []
def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        problems.append(what)

ID, NEW_ID, CUSTOMER = "$ID", "$NEW_ID", "<$CUSTOMER_MSGID>"
for kind in want:
    path, raw, meta = found[kind]
    print(f"{kind}: {os.path.basename(path)}")
    check(copies[kind] == 1, f"arrived once ({copies[kind]} copies)")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    check(b"\r\n\r\n" in raw and not re.search(rb"(?<!\r)\n|\r(?!\n)", head), "CRLF line ends, no bare CR or LF in the header")
    check(all(re.match(rb"^[!-9;-~]+:", l) or l[:1] in (b" ", b"\t") for l in lines),
          "every header line is a field or a folded continuation (no injected lines)")
    check(not msg.defects, f"no parser defects {msg.defects}")
    name, addr = email.utils.parseaddr(str(msg["From"]))
    check(addr == "support@example.com", f"From is support@example.com ({msg['From']})")
    check(bool(msg["Message-ID"]) and msg["Message-ID"].strip() == f"<{want[kind]}>", f"Message-ID {msg['Message-ID']}")
    check(msg["Date"] is not None, "Date present")
    check(msg["MIME-Version"] is not None, "MIME-Version present")
    check(msg["Auto-Submitted"] is None, "no Auto-Submitted on an agent's mail")
    check(msg["Bcc"] is None, "no Bcc header")
    check(meta.get("tls") is True and meta.get("auth_login") == "support@example.com",
          f"sent over TLS as support@example.com ({meta.get('auth_login')}, tls {meta.get('tls')})")
    check(meta.get("mail_from") == "support@example.com", f"envelope sender {meta.get('mail_from')}")
    subject = str(msg["Subject"])
    refs = str(msg["References"] or "").split()
    if kind == "reply":
        check(meta["rcpt_tos"] == ["liam.carter@example.org"], f"to the customer {meta['rcpt_tos']}")
        check(str(msg["In-Reply-To"]).strip() == CUSTOMER, f"In-Reply-To the customer's message ({msg['In-Reply-To']})")
        check(CUSTOMER in refs, "References hold the customer's message")
        check(f"[MR-{ID}]" in subject and subject.lower().startswith("re:"), f"subject {subject!r} is Re: with [MR-{ID}]")
        check("refunded the duplicate payment" in msg.get_body(("plain",)).get_content(), "the text is there")
    elif kind == "forward":
        check(meta["rcpt_tos"] == ["claims@example.net"], f"to claims@example.net only {meta['rcpt_tos']}")
        check(addr != "claims@example.net" and "claims@example.net" in str(msg["To"]), f"To {msg['To']}")
        parts = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"]
        check(len(parts) == 1, "the original is attached as message/rfc822")
        if parts:
            inner = parts[0].get_content()
            check(str(inner["Message-ID"]).strip() == CUSTOMER, f"the attachment is the customer's email ({inner['Message-ID']})")
        check(subject.lower().startswith("fw"), f"subject {subject!r} is a forward")
    elif kind == "follow_up":
        check(meta["rcpt_tos"] == ["liam.carter@example.org"], f"to the customer {meta['rcpt_tos']}")
        check(f"[MR-{ID}]" in subject and "Did the refund arrive?" in subject, f"subject {subject!r} carries [MR-{ID}]")
        check(CUSTOMER in refs and f"<{want['reply']}>" in refs, f"References thread it to the interaction ({refs})")
        check(msg["In-Reply-To"] is None, "no In-Reply-To: a follow-up answers no one message (by design)")
    else:
        check(meta["rcpt_tos"] == ["bob@example.org"], f"to bob {meta['rcpt_tos']}")
        check(f"[MR-{NEW_ID}]" in subject and NEW_ID != ID, f"subject {subject!r} carries its own token [MR-{NEW_ID}]")
        check(msg["In-Reply-To"] is None, "a new email replies to nothing")
if problems:
    print(f"{len(problems)} problem(s)")
    sys.exit(1)
PY
}
DEADLINE=$((SECONDS + 20))
until check_sink wait; do
  ((SECONDS < DEADLINE)) || fail "the sink did not get all four messages within 20 s (see the transcripts)"
  sleep 0.5
done
check_sink full || fail "a message is not well formed"

step "the transcripts show them sent"
TRANSCRIPT=$(call "$API/v1/interactions/$ID/transcript" -H "Authorization: Bearer $BEN")
echo "$TRANSCRIPT" | jq -c '.messages[] | {direction, message_id, kind: .delivery.kind, delivery: .delivery.state}'
expect "$TRANSCRIPT" "[.messages[] | select(.direction == \"outbound\") | [.message_id, .delivery.kind, .delivery.state]]
  == [[\"$REPLY_MSGID\", \"reply\", \"sent\"], [\"$FORWARD_MSGID\", \"forward\", \"sent\"], [\"$FOLLOW_MSGID\", \"follow_up\", \"sent\"]]" \
  "the transcript of $ID should list the reply, forward and follow-up, each sent"
TRANSCRIPT=$(call "$API/v1/interactions/$NEW_ID/transcript" -H "Authorization: Bearer $ANA")
expect "$TRANSCRIPT" "[.messages[] | [.message_id, .delivery.kind, .delivery.state]] == [[\"$NEW_MSGID\", \"new_email\", \"sent\"]]" \
  "the transcript of $NEW_ID should hold the new email, sent"

step "10. the customer answers the reply; it threads back into interaction $ID"
ANSWER_MSGID="answer-$ID-$RANDOM@example.org"
TRANSCRIPT=$(call "$API/v1/interactions/$ID/transcript" -H "Authorization: Bearer $BEN")
REPLY_SUBJECT=$(jq -r ".messages[] | select(.message_id == \"$REPLY_MSGID\") | .subject" <<<"$TRANSCRIPT") # Re: ... [MR-...]
printf '%s\r\n' \
  "Message-ID: <$ANSWER_MSGID>" \
  "Date: $(date -R)" \
  "MIME-Version: 1.0" \
  "From: Liam Carter <liam.carter@example.org>" \
  "To: support@example.com" \
  "Subject: $REPLY_SUBJECT" \
  "In-Reply-To: <$REPLY_MSGID>" \
  "References: <$CUSTOMER_MSGID> <$REPLY_MSGID>" \
  "Content-Type: text/plain; charset=UTF-8" \
  "" \
  "Thank you, the refund arrived." >"$WORK/answer.eml"
curl -sS --url "$SMTP" --mail-from liam.carter@example.org --mail-rcpt support@example.com \
  --upload-file "$WORK/answer.eml" || fail "the SMTP listener refused the customer's answer"
INTERACTION=
for _ in $(seq 100); do
  INTERACTION=$(call "$API/v1/interactions/$ID" -H "Authorization: Bearer $SAM")
  jq -e "tostring | contains(\"$ANSWER_MSGID\")" >/dev/null <<<"$INTERACTION" && break
  sleep 0.2
done
echo "$INTERACTION" | jq -c '{state: .interaction.state, queue: .interaction.queue, messages: [.messages[] | {direction, message_id}]}'
expect "$INTERACTION" ".messages[-1] | .message_id == \"$ANSWER_MSGID\" and .direction == \"inbound\"" \
  "the customer's answer should be the newest message of interaction $ID"
JOURNAL=$("${MR[@]}" journal --json --limit 5)
ENTRY=$(jq -c "select(.message_id == \"$ANSWER_MSGID\")" <<<"$JOURNAL")
echo "$ENTRY"
expect "$ENTRY" ".disposition == \"threaded\" and .interaction_id == \"$ID\"" "the journal should show the answer threaded into $ID"

printf '\nOK: %s\n' "the admin set the channel's SMTP server through the API; reply, forward, transfer, end, follow-up \
and new email went out well formed through it; the answer threaded back"
