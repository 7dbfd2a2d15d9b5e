#!/usr/bin/env bash
# The README walkthrough "Hand cases off to the CRM" (issue 7): an email in, accepted, with its case in the Local
# CRM and then in Dynamics 365 (the Dataverse emulator), and an AI assistant's handoff, all with curl.
#
# Starts what it needs (`mailroom serve` on a fresh data directory; the Dataverse emulator unless it already runs),
# walks the flow, checks every answer, and stops what it started. Exits non-zero on the first failure.
#
#   bash tests/walkthroughs/crm.sh
#
# Part A: the Local CRM (the default). Part B: an admin points Mailroom at Dynamics (the emulator's built-in
# environment, tenant mailroom-demo); the incident, its contact and its queue item are checked in the emulator
# through its Web API, with a token from its token endpoint.
#
# The emulator's built-in environment is shared and keeps its records: contacts from earlier runs are matched,
# so the second email's screen pop may offer a contact instead of a new-contact form (both are handled). The
# second email gets a Message-ID of its own each run, and the AI handoff an idempotency key of its own, so
# every run creates (and checks) new incidents.
#
# Environment (all optional):
#   MAILROOM_ROOT  the checkout (default: the one holding this script)
#   MAILROOM_BIN   the mailroom binary (default $CARGO_TARGET_DIR/debug/mailroom, built if missing)
#   DATA           the data directory, emptied first (default: a new temporary directory)
#   API_PORT, SMTP_PORT (default 28280, 22725); MAILROOM_DATAVERSE_PORT (default 45690)
# shellcheck disable=SC2016 # OData's $select and $filter are literal
set -euo pipefail

ROOT=${MAILROOM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}
MAILROOM=${MAILROOM_BIN:-$CARGO_TARGET_DIR/debug/mailroom}
DATA=${DATA:-$(mktemp -d)/data}
PORTS_GIVEN=${API_PORT:-}${SMTP_PORT:-}
API_PORT=${API_PORT:-28280}
SMTP_PORT=${SMTP_PORT:-22725}
export MAILROOM_DATAVERSE_PORT=${MAILROOM_DATAVERSE_PORT:-45690}
DV=http://127.0.0.1:$MAILROOM_DATAVERSE_PORT
WEBAPI=$DV/api/data/v9.2
API=http://127.0.0.1:$API_PORT/v1
LOG=$DATA.serve.log
RUN=$(date +%s)-$$ # makes this run's second email and AI handoff new to the shared emulator

# step, fail, expect, call, stop_serve, ensure_mailroom
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
json() { call -H 'Content-Type: application/json' "$@"; }

# wait_offer FILTER: polls ana's offers until one matches the jq FILTER (at most 30 s); prints that offer.
wait_offer() {
  local deadline=$((SECONDS + 30)) offers
  while ((SECONDS < deadline)); do
    offers=$(call "$API/me/offers" -H "Authorization: Bearer $ANA")
    if jq -e ".offers | any($1)" >/dev/null <<<"$offers"; then
      jq -c "first(.offers[] | select($1))" <<<"$offers"
      return 0
    fi
    sleep 0.5
  done
  fail "no offer matching $1 within 30 s: $offers"
}

# wait_case ID FILTER: polls GET /interactions/ID/case until the jq FILTER holds (the handoff worker finishes a
# case in the background; at most 30 s); prints the case.
wait_case() {
  local deadline=$((SECONDS + 30)) case_json
  while ((SECONDS < deadline)); do
    case_json=$(curl -sS "$API/interactions/$1/case" -H "Authorization: Bearer $ANA") || true
    if jq -e "$2" >/dev/null 2>&1 <<<"$case_json"; then
      echo "$case_json"
      return 0
    fi
    sleep 0.5
  done
  fail "the case of $1 did not reach $2 within 30 s: $case_json"
}

# mail FILE FROM: sends FILE to the support channel over SMTP.
mail() {
  curl -sS --url "smtp://127.0.0.1:$SMTP_PORT" --mail-from "$2" --mail-rcpt support@example.com \
    --upload-file "$1" || fail "SMTP delivery of $1"
}

SERVE_PID=
STARTED_DATAVERSE=
cleanup() {
  local rc=$?
  stop_serve "$rc"
  if [[ -n $STARTED_DATAVERSE ]]; then bash "$ROOT/infra/dataverse.sh" stop || true; fi
  exit "$rc"
}
trap cleanup EXIT

cd "$ROOT"
ensure_mailroom

step "mailroom serve (Local CRM, the default)"
rm -rf "$DATA" "$LOG"
mkdir -p "$DATA"
# Ports 28280 and 22725 lie in Linux's ephemeral range: a recent outgoing connection from one of them (in
# TIME-WAIT) keeps it from being bound. Unless the ports were given, try the next ones then.
for attempt in $(seq 20); do
  "$MAILROOM" --data-dir "$DATA" serve --api-addr "127.0.0.1:$API_PORT" --smtp-addr "127.0.0.1:$SMTP_PORT" \
    >"$LOG" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "$API/health" 2>/dev/null && break 2
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$SERVE_PID" 2>/dev/null && fail "the API does not answer at $API"
  if [[ -z $PORTS_GIVEN ]] && grep -q 'Address already in use' "$LOG" && ((attempt < 20)); then
    echo "port $API_PORT or $SMTP_PORT is taken: trying the next ones"
    API_PORT=$((API_PORT + 1))
    SMTP_PORT=$((SMTP_PORT + 1))
    API=http://127.0.0.1:$API_PORT/v1
    continue
  fi
  fail "mailroom serve exited"
done
curl -fsS -o /dev/null "$API/health" || fail "the API does not answer at $API"
grep -v 'INFO' "$LOG" || true

ADA=$("$MAILROOM" --data-dir "$DATA" token --agent ada)                    # admin
ANA=$("$MAILROOM" --data-dir "$DATA" token --agent ana)                    # agent
BOT=$("$MAILROOM" --data-dir "$DATA" token --agent bot --role ai_assistant) # an AI assistant

SETTINGS=$(call "$API/admin/crm" -H "Authorization: Bearer $ADA")
echo "$SETTINGS"
expect "$SETTINGS" '.backend == "local" and .default_queue_id == null and .default_priority == 2' \
  "a fresh data directory hands off to the Local CRM"

# ------------------------------------------------------------------------------------------- Part A: Local CRM

step "A1. Ana is available; an email arrives over SMTP"
PRESENCE=$(json -X PUT "$API/me/presence" -H "Authorization: Bearer $ANA" -d '{"presence":"available"}')
expect "$PRESENCE" '.presence == "available"' "Ana is available"
mail tests/fixtures/email/new/billing-invoice-refund-question.eml liam.carter@example.org
OFFER=$(wait_offer '.customer_email == "liam.carter@example.org"')
echo "$OFFER"
ID=$(jq -r .interaction_id <<<"$OFFER")

step "A2. Ana accepts: the screen pop finds no contact and offers a new-contact form"
ACCEPT=$(call -X POST "$API/me/offers/$ID/accept" -H "Authorization: Bearer $ANA")
echo "$ACCEPT" | jq -c '{state, category, queue, screen_pop: (.screen_pop | {matches, case, new_contact})}'
expect "$ACCEPT" '.state == "assigned" and .agent == "ana"' "Ana holds the interaction"
expect "$ACCEPT" '.screen_pop.matches == 0 and .screen_pop.contacts == [] and .screen_pop.case.status == "awaiting_contact"' \
  "no contact matches on a fresh Local CRM"
expect "$ACCEPT" '.screen_pop.new_contact == {"email": "liam.carter@example.org", "first_name": "Liam", "last_name": "Carter"}' \
  "the new-contact form is prefilled from the sender"
expect "$ACCEPT" '.screen_pop.inbound_email.subject | test("charged twice")' "the screen pop shows the email"
CLASSIFICATION=$(jq -r .category <<<"$ACCEPT")

step "A3. the interaction cannot end while its case waits for a contact"
REFUSED=$(call_status 409 -X POST "$API/interactions/$ID/end" -H "Authorization: Bearer $ANA")
echo "$REFUSED"
expect "$REFUSED" '.error.field == "contact_id"' "409 names the field contact_id"

step "A4. Ana creates the contact; the case is created"
CREATED=$(call_status 201 -X POST "$API/interactions/$ID/contact/new" -H "Authorization: Bearer $ANA" \
  -H 'Content-Type: application/json' -d '{"first_name": "Liam", "last_name": "Carter"}')
echo "$CREATED"
expect "$CREATED" '.stage == "created" and .contact_resolution == "created_by_agent" and (.ticket_number | startswith("CAS-"))' \
  "the case is created with the new contact"
TICKET=$(jq -r .ticket_number <<<"$CREATED")
CONTACT=$(jq -r .contact_id <<<"$CREATED")

step "A5. the interaction's case: ticket number and contact"
CASE=$(call "$API/interactions/$ID/case" -H "Authorization: Bearer $ANA")
echo "$CASE"
expect "$CASE" ".ticket_number == \"$TICKET\" and .contact_id == \"$CONTACT\" and .emails_on_case == 1" \
  "the case has its ticket number, its contact and the email"

step "A6. the case in the Local CRM: contact, transcript, priority, queue"
LCASE=$(call "$API/crm/cases/$TICKET" -H "Authorization: Bearer $ANA")
echo "$LCASE" | jq '{ticket_number, title, origin, priority, queue_id, properties, customer: .customer.full_name,
  emails: (.customer.emails | map(select(. != null))), activities: (.activities | length), description}'
expect "$LCASE" ".title == \"$CLASSIFICATION - Liam Carter\" and .customer_id == \"$CONTACT\" and .customer.full_name == \"Liam Carter\"" \
  "title <classification> - <sender>, and the contact"
expect "$LCASE" '.description | startswith("Channel: email\nClassification: ") and contains("\nTranscript:\n")' \
  "the description starts with the transcript header"
expect "$LCASE" '.description | contains("| Liam Carter <liam.carter@example.org> (customer)") and contains("charged twice for invoice INV-2025-0417")' \
  "the description holds the customer's message"
expect "$LCASE" '.origin == 2 and .priority == 2' "origin Email (2), priority Normal (2, the default)"
expect "$LCASE" '.queue_id == null' "no queue: the Local CRM has no default queue unless an admin sets one"
expect "$LCASE" '.activities | length == 1 and .[0].incoming' "the email is on the case as an activity"
CASES=$(call "$API/crm/cases" -H "Authorization: Bearer $ANA")
expect "$CASES" ".cases | any(.ticket_number == \"$TICKET\")" "the case is listed"
CONTACTS=$(call "$API/crm/contacts?email=liam.carter@example.org" -H "Authorization: Bearer $ANA")
expect "$CONTACTS" ".contacts | length == 1 and .[0].id == \"$CONTACT\"" "the contact is found by email"

step "A7. now the interaction ends"
ENDED=$(call -X POST "$API/interactions/$ID/end" -H "Authorization: Bearer $ANA")
expect "$ENDED" '.state == "ended"' "the interaction ends: $ENDED"
echo "ended"

step "A8. an AI assistant hands a conversation off (201, replay 200, another conversation under the key 409)"
AI_BODY='{"sender": {"email": "dana@example.org", "name": "Dana Smith"},
  "messages": [{"timestamp": "2025-01-06T10:00:00Z", "role": "customer", "text": "My parcel never arrived."},
               {"timestamp": "2025-01-06T10:00:05Z", "role": "assistant", "text": "I am passing you to an agent."}],
  "classification": "delivery", "summary": "Parcel lost",
  "ticket_properties": {"casetypecode": "Problem"}}'
AI=$(call_status 201 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $BOT" -H 'Idempotency-Key: chat-42' \
  -H 'Content-Type: application/json' -d "$AI_BODY")
echo "$AI"
expect "$AI" '.replayed == false and (.ticket_number | startswith("CAS-")) and .contact_resolution == "created_from_sender"' \
  "a new case for a new sender"
AI_INCIDENT=$(jq -r .incident_id <<<"$AI")
AI_TICKET=$(jq -r .ticket_number <<<"$AI")
AGAIN=$(call_status 200 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $BOT" -H 'Idempotency-Key: chat-42' \
  -H 'Content-Type: application/json' -d "$AI_BODY")
echo "$AGAIN"
expect "$AGAIN" ".replayed == true and .incident_id == \"$AI_INCIDENT\" and .ticket_number == \"$AI_TICKET\"" \
  "the retry answers the same case"
OTHER=$(call_status 409 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $BOT" -H 'Idempotency-Key: chat-42' \
  -H 'Content-Type: application/json' -d "${AI_BODY/never arrived/arrived broken}")
echo "$OTHER"
expect "$OTHER" '.error.field == "idempotency_key"' "409 names the field idempotency_key"
FORBIDDEN=$(call_status 403 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $ANA" -H 'Idempotency-Key: chat-43' \
  -H 'Content-Type: application/json' -d "$AI_BODY")
echo "an agent's token: 403 $FORBIDDEN"
AICASE=$(call "$API/crm/cases/$AI_TICKET" -H "Authorization: Bearer $ANA")
expect "$AICASE" '.title == "delivery - Dana Smith" and .properties.casetypecode == 2' "the AI case: title and case type"
expect "$AICASE" '.description | startswith("Channel: AI assistant\nClassification: delivery\nSummary: Parcel lost") and contains("My parcel never arrived.")' \
  "the AI case: transcript"
echo "AI case $AI_TICKET: $(jq -c '{title, priority, properties}' <<<"$AICASE")"

# --------------------------------------------------------------------------- Part B: Dynamics (the emulator)

step "B1. the Dataverse emulator"
if ! curl -fsS -o /dev/null --max-time 1 "$DV/health" 2>/dev/null; then
  bash infra/dataverse.sh start
  STARTED_DATAVERSE=1
fi
# A token for checking records in Dataverse (the client Mailroom uses; any client of the environment would do).
DV_TOKEN=$(call -X POST "$DV/mailroom-demo/oauth2/v2.0/token" -d grant_type=client_credentials \
  -d client_id=mailroom-handoff -d client_secret=mailroom-handoff-secret --data-urlencode "scope=$DV/.default" |
  jq -r .access_token)
dv() { call -G "$WEBAPI/$1" -H "Authorization: Bearer $DV_TOKEN" -H 'Accept: application/json' "${@:2}"; }
SUPPORT=$(dv queues --data-urlencode "\$filter=name eq 'Support'" --data-urlencode '$select=queueid' | jq -r '.value[0].queueid')
[[ $SUPPORT =~ ^[0-9a-f-]{36}$ ]] || fail "no Support queue in the emulator: $SUPPORT"
echo "queue Support: $SUPPORT"

step "B2. the admin points Mailroom at Dynamics, with a default queue, priority and a choice value"
SAVED=$(json -X PUT "$API/admin/crm" -H "Authorization: Bearer $ADA" -d "{
  \"backend\": \"dataverse\",
  \"environment_url\": \"$DV\",
  \"authority\": \"$DV\",
  \"tenant\": \"mailroom-demo\",
  \"client_id\": \"mailroom-handoff\",
  \"client_secret\": \"mailroom-handoff-secret\",
  \"default_queue_id\": \"$SUPPORT\",
  \"default_priority\": 1,
  \"ticket_properties\": {\"new_region\": \"Europe\"}}")
echo "$SAVED"
expect "$SAVED" ".backend == \"dataverse\" and .client_secret_set and .default_queue_id == \"$SUPPORT\" and .default_priority == 1" \
  "the settings are saved"
expect "$SAVED" '.ticket_properties == {"new_region": 100000001} and .warnings == []' \
  "the label Europe is stored as its option value 100000001"
[[ $SAVED != *mailroom-handoff-secret* ]] || fail "the PUT answer shows the secret"
VERIFY=$(call -X POST "$API/admin/crm/verify" -H "Authorization: Bearer $ADA")
echo "$VERIFY" | jq -c '{status, problems, checks: [.checks[] | "\(.name): \(.ok)"]}'
expect "$VERIFY" '.status == "active" and .problems == [] and (.checks | all(.ok))' "verify reports the connection active"
SETTINGS=$(call "$API/admin/crm" -H "Authorization: Bearer $ADA")
[[ $SETTINGS != *mailroom-handoff-secret* ]] || fail "GET /admin/crm shows the secret: $SETTINGS"
expect "$SETTINGS" '.client_secret_set and (has("client_secret") | not)' "only client_secret_set, never the secret"
echo "GET /admin/crm: client_secret_set $(jq .client_secret_set <<<"$SETTINGS"), no secret"

step "B3. a second email, from another sender (a Message-ID of this run's own)"
EML=$DATA.priya.eml
sed "s/^Message-ID: <\(.*\)>/Message-ID: <crm-walkthrough-$RUN.\1>/" tests/fixtures/email/new/angry-complaint.eml >"$EML"
grep -q "crm-walkthrough-$RUN" "$EML" || fail "could not give the email a Message-ID of its own"
PRESENCE=$(call "$API/me/presence" -H "Authorization: Bearer $ANA")
expect "$PRESENCE" '.presence == "available"' "Ana is still available"
mail "$EML" priya.shah@example.net
OFFER=$(wait_offer '.customer_email == "priya.shah@example.net"')
echo "$OFFER"
ID2=$(jq -r .interaction_id <<<"$OFFER")

step "B4. Ana accepts; the contact is settled as the screen pop requires"
ACCEPT=$(call -X POST "$API/me/offers/$ID2/accept" -H "Authorization: Bearer $ANA")
echo "$ACCEPT" | jq -c '{state, category, screen_pop: (.screen_pop | {matches, contacts: [.contacts[]? | {id, name}], case, new_contact, error})}'
expect "$ACCEPT" '.state == "assigned" and (.screen_pop | has("error") | not)' "accepted with a screen pop from Dynamics"
CLASSIFICATION2=$(jq -r .category <<<"$ACCEPT")
MATCHES=$(jq -r .screen_pop.matches <<<"$ACCEPT")
case $MATCHES in
  0) # a new sender for this environment: create the contact from the prefilled form
    expect "$ACCEPT" '.screen_pop.case.status == "awaiting_contact" and .screen_pop.new_contact.email == "priya.shah@example.net"' \
      "no match: a new-contact form"
    FORM=$(jq -c '.screen_pop.new_contact | {first_name, last_name}' <<<"$ACCEPT")
    SETTLED=$(call_status 201 -X POST "$API/interactions/$ID2/contact/new" -H "Authorization: Bearer $ANA" \
      -H 'Content-Type: application/json' -d "$FORM")
    echo "created the contact: $SETTLED"
    ;;
  1) # known from an earlier run: the case goes to the one matching contact by itself
    expect "$ACCEPT" '.screen_pop.case.status == "created" or .screen_pop.case.status == "pending"' \
      "one match: the case is created (or pending) with that contact"
    echo "one contact matched: the case needs nothing from Ana"
    ;;
  *) # several contacts carry the address: Ana picks one
    PICK=$(jq -r '.screen_pop.contacts[0].id' <<<"$ACCEPT")
    SETTLED=$(call -X POST "$API/interactions/$ID2/contact" -H "Authorization: Bearer $ANA" \
      -H 'Content-Type: application/json' -d "{\"contact_id\": \"$PICK\"}")
    echo "linked contact $PICK: $SETTLED"
    ;;
esac
CASE2=$(wait_case "$ID2" ".stage == \"created\" and .queued_in == \"$SUPPORT\"")
echo "$CASE2"
INCIDENT2=$(jq -r .incident_id <<<"$CASE2")
TICKET2=$(jq -r .ticket_number <<<"$CASE2")
CONTACT2=$(jq -r .contact_id <<<"$CASE2")

step "B5. the incident in Dynamics (the emulator's Web API): title, transcript, origin, priority, choice, contact"
INC=$(dv "incidents($INCIDENT2)" --data-urlencode \
  '$select=ticketnumber,title,description,caseorigincode,prioritycode,new_region,_customerid_value,emailaddress')
echo "$INC" | jq 'del(."@odata.context", ."@odata.etag")'
expect "$INC" ".ticketnumber == \"$TICKET2\" and .title == \"$CLASSIFICATION2 - Priya Shah\"" \
  "the incident's ticket number and title <classification> - <sender>"
expect "$INC" '.description | startswith("Channel: email\nClassification: ") and contains("\nTranscript:\n") and contains("| Priya Shah <priya.shah@example.net> (customer)") and contains("the THIRD time your courier has failed")' \
  "the description holds the transcript"
expect "$INC" '.caseorigincode == 2 and .prioritycode == 1 and .new_region == 100000001' \
  "origin Email (2), priority High (1, the default set), region Europe (100000001)"
expect "$INC" "._customerid_value == \"$CONTACT2\"" "the customer is the contact"
PERSON=$(dv "contacts($CONTACT2)" --data-urlencode '$select=fullname,emailaddress1')
expect "$PERSON" '.fullname == "Priya Shah" and .emailaddress1 == "priya.shah@example.net"' "the contact"
echo "customer: $(jq -c '{fullname, emailaddress1}' <<<"$PERSON")"

step "B6. the incident is in the Support queue; its email is on it"
ITEMS=$(dv queueitems --data-urlencode "\$filter=_objectid_value eq $INCIDENT2" --data-urlencode '$select=_queueid_value,statecode')
echo "$ITEMS" | jq -c '.value'
expect "$ITEMS" ".value | length == 1 and .[0]._queueid_value == \"$SUPPORT\"" "one queue item, in Support"
EMAILS=$(dv emails --data-urlencode "\$filter=_regardingobjectid_value eq $INCIDENT2" --data-urlencode '$select=subject')
expect "$EMAILS" '.value | length == 1 and (.[0].subject | test("third missed delivery"))' "the email activity on the case"
ENDED=$(call -X POST "$API/interactions/$ID2/end" -H "Authorization: Bearer $ANA")
expect "$ENDED" '.state == "ended"' "the interaction ends: $ENDED"

step "B7. an AI handoff to Dynamics, found in the emulator"
KEY=crm-walkthrough-$RUN
AI=$(call_status 201 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $BOT" -H "Idempotency-Key: $KEY" \
  -H 'Content-Type: application/json' -d "$AI_BODY")
echo "$AI"
AI_INCIDENT=$(jq -r .incident_id <<<"$AI")
AGAIN=$(call_status 200 -X POST "$API/ai/handoffs" -H "Authorization: Bearer $BOT" -H "Idempotency-Key: $KEY" \
  -H 'Content-Type: application/json' -d "$AI_BODY")
expect "$AGAIN" ".replayed == true and .incident_id == \"$AI_INCIDENT\"" "the retry answers the same incident"
INC=$(dv "incidents($AI_INCIDENT)" --data-urlencode \
  '$select=ticketnumber,title,description,caseorigincode,prioritycode,casetypecode,new_region,_customerid_value')
echo "$INC" | jq -c 'del(."@odata.context", ."@odata.etag", .description)'
expect "$INC" ".ticketnumber == $(jq .ticket_number <<<"$AI") and .title == \"delivery - Dana Smith\" and ._customerid_value == $(jq .contact_id <<<"$AI")" \
  "the AI incident: ticket number, title and customer"
expect "$INC" '.description | startswith("Channel: AI assistant\nClassification: delivery\nSummary: Parcel lost") and contains("My parcel never arrived.")' \
  "the AI incident: transcript"
expect "$INC" '.prioritycode == 1 and .casetypecode == 2 and .new_region == 100000001' \
  "the AI incident: default priority, its case type and the default region"
ITEMS=$(dv queueitems --data-urlencode "\$filter=_objectid_value eq $AI_INCIDENT" --data-urlencode '$select=_queueid_value')
expect "$ITEMS" ".value | length == 1 and .[0]._queueid_value == \"$SUPPORT\"" "the AI incident is in the Support queue"

printf '\nOK: Local CRM and Dynamics: screen pop, contact, case with transcript, priority, choice value and queue, end, AI handoffs\n'
