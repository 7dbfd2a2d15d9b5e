"""A strict local emulator of the Microsoft Graph subset Mailroom's Teams chat uses, for tests and demos.

    python3 infra/emulators/graph.py --port 45710

It serves, on one port (reference: ../shared/reference/dataverse-and-graph.md, section 8):
  POST /{tenant}/oauth2/v2.0/token       the token endpoint (identity.Authority): client_credentials,
                                          authorization_code (with PKCE) and refresh_token
  GET  /{tenant}/oauth2/v2.0/authorize   delegated sign-in: the user is the login_hint; a user marked
                                          sign_in=fail, disabled or unknown is sent back with ?error=
  /v1.0/users[/{id}]                     $select, $top 1-999 (else 400 "Invalid page size specified"), default
                                          page 100, @odata.nextLink with an opaque $skiptoken
  /v1.0/me, /v1.0/me/licenseDetails, /v1.0/users/{id}/licenseDetails (TEAMS1 service plan), /users/{id}/presence
  POST /v1.0/communications/getPresencesByUserId   at most 650 ids
  POST /v1.0/chats                       oneOnOne only; one chat per pair (POSTing again returns it)
  /v1.0/chats/{id}[/messages[/{id}]]     GET list ($top 1-50, $orderby lastModifiedDateTime|createdDateTime desc,
                                          $filter on the $orderby property only, else ignored; nextLink paging),
                                          POST (delegated only: an app-only send is refused with 401, as Graph
                                          allows application sends for migration only), PATCH (edit, sender only),
                                          setReaction / unsetReaction
  POST /v1.0/users/{id}/chats/{id}/messages/{id}/softDelete | undoSoftDelete
  /v1.0/subscriptions[/{id}[/reauthorize]]   resource /chats/{id}/messages; changeType created,updated,deleted;
                                          expirationDateTime at most 4,320 minutes ahead, lifecycleNotificationUrl
                                          required beyond 1 hour; one subscription per app per chat; the validation
                                          handshake on both URLs at creation (200, text/plain, the decoded token,
                                          within 10 s); clientState at most 128 characters; PATCH renews (404 once
                                          expired); includeResourceData needs an encryption certificate
Change notifications (created, updated for edits and reactions, deleted for soft deletes) are POSTed to the
subscription's notificationUrl from a delivery thread per tenant, after the request that caused them, with the
subscription's clientState; lifecycle notifications (reauthorizationRequired, subscriptionRemoved, missed) go to
its lifecycleNotificationUrl. A delivery that does not get a 2xx within 10 s is retried twice, then dropped.

Every Graph request needs a valid bearer token of a tenant of this emulator; 429 with a Retry-After (seconds,
fractional) and Graph's error body can be switched on per tenant.

Tests create isolated tenants (POST /_emulator/graph/tenants), each with its own client, users, chats and
subscriptions, and drive them with test controls under /_emulator/graph/{tenant}/...:
  users            add users: {"users": [{displayName, mail, ...}]} or {"generate": N}
  user             change one: {"id" | "mail", "presence": {...}, "teams": false, "sign_in": "fail" | "cancel" | "ok",
                   "sign_in_as": "<another user>" (picks another account at sign-in), "accountEnabled"}
  send             a Teams user writes: {"from", "to" | "chat_id", "text", "content_type"} (404 without a chat)
  edit, delete, undelete, react, unreact   {"chat_id", "message_id", "text" | "reaction", "user"}
  throttle         {"count": N (-1: until switched off, 0: off), "retry_after": 1.5, "method", "path"}
  notifications    {"deliver": false} drops notifications (a gap), {"deliver": true} resumes
  lifecycle        {"subscription_id", "event"}: subscriptionRemoved also removes the subscription
  expire           {"subscription_id"}: it expires now (no more notifications, PATCH answers 404)
  GET state        users, chats with messages, subscriptions, deliveries and the request log

The built-in tenant "mailroom-demo" (client "mailroom-teams", secret "mailroom-teams-secret") has Teams users for
the demo agents (ana@, ben@, ada@example.com; sam@example.com has no Teams license) and colleagues outside the
contact centre.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import identity  # noqa: E402  (the shared token authority)

API = "/v1.0"
DEMO_TENANT = "mailroom-demo"
DEMO_CLIENT = "mailroom-teams"
NS = uuid.UUID("3b5f3c1e-2a5d-4a7e-9d0a-6f1b0c2d4e81")
APP_ROLES = ["User.Read.All", "Presence.Read.All", "Chat.Create", "Chat.Read.All"]
MAX_SUBSCRIPTION_MINUTES = 4320
MIGRATION_ONLY = ("Message POST is allowed in application-only context only for import purposes. Refer to "
                  "https://docs.microsoft.com/microsoftteams/platform/graph-api/import-messages/"
                  "import-external-messages-to-teams for more details.")
LIFECYCLE_REQUIRED = ("lifecycleNotificationUrl is a required property for subscription creation on this resource "
                      "when the expirationDateTime value is set to greater than 1 hour.")

DEMO_USERS = [
    ("Ana Lima", "ana@example.com", "Customer Service Agent", "Customer Service", "Available", "Available"),
    ("Ben Okafor", "ben@example.com", "Customer Service Agent", "Customer Service", "Away", "Away"),
    ("Ada Park", "ada@example.com", "Contact Centre Manager", "Customer Service", "Busy", "InAMeeting"),
    ("Sam Reyes", "sam@example.com", "Team Lead", "Customer Service", None, None),  # no Teams license
    ("Alex Weber", "alex.weber@example.com", "Claims Handler", "Claims", "Available", "Available"),
    ("Priya Shah", "priya.shah@example.com", "Software Engineer", "Engineering", "Busy", "InACall"),
    ("Zoe Martin", "zoe.martin@example.com", "Account Executive", "Sales", "Offline", "OffWork"),
]


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime | None:
    """Graph's timestamps: ISO 8601 with up to 7 fractional digits and a Z or an offset."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if not m:
        return None
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    micro = int((m.group(2) or "0").ljust(6, "0")[:6])
    tz = m.group(3) or "Z"
    offset = timedelta(0) if tz == "Z" else timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])) * (1 if tz[0] == "+" else -1)
    return (base.replace(microsecond=micro) - offset).replace(tzinfo=timezone.utc)


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def bad(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str = "The requested resource does not exist.", code: str = "NotFound") -> GraphError:
    return GraphError(404, code, message)


def forbidden(message: str, code: str = "Forbidden") -> GraphError:
    return GraphError(403, code, message)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "innerError": {
        "date": now().strftime("%Y-%m-%dT%H:%M:%S"), "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4())}}}


class Tenant:
    """One isolated organisation: its app client, directory, chats, subscriptions and switches."""

    def __init__(self, name: str, client_id: str, client_secret: str):
        self.name = name
        self.tenant_id = str(uuid.uuid5(NS, "tenant:" + name))
        self.client_id, self.client_secret = client_id, client_secret
        self.lock = threading.RLock()
        self.users: dict[str, dict] = {}
        self.chats: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.throttle: dict | None = None
        self.deliver = True
        self.requests: list[dict] = []
        self.deliveries: list[dict] = []
        self.skiptokens: dict[str, dict] = {}
        self.outbox: queue.Queue = queue.Queue()
        self.last_message_ms = 0
        threading.Thread(target=self._deliver_loop, daemon=True, name=f"deliver-{name}").start()

    # ------------------------------------------------------------------ directory
    def add_user(self, u: dict) -> dict:
        mail = u.get("mail")
        upn = u.get("userPrincipalName") or mail or f"user{len(self.users)}@{self.name}.example"
        user = {
            "id": u.get("id") or str(uuid.uuid5(NS, f"{self.name}:{upn.lower()}")),
            "displayName": u.get("displayName", upn.split("@")[0]),
            "mail": mail,
            "userPrincipalName": upn,
            "jobTitle": u.get("jobTitle"),
            "department": u.get("department"),
            "accountEnabled": u.get("accountEnabled", True),
            # emulator-only
            "teams": u.get("teams", True),
            "sign_in": u.get("sign_in", "ok"),
            "presence": u.get("presence") or {"availability": "Available", "activity": "Available"},
        }
        with self.lock:
            self.users[user["id"]] = user
        return user

    def find_user(self, ref: str | None) -> dict | None:
        if not ref:
            return None
        ref = ref.strip().strip("'")
        m = re.fullmatch(r".*users\('([^']+)'\)", ref)
        if m:
            ref = m.group(1)
        with self.lock:
            if ref in self.users:
                return self.users[ref]
            low = ref.lower()
            for u in self.users.values():
                if low in ((u["mail"] or "").lower(), u["userPrincipalName"].lower()):
                    return u
        return None

    def public_user(self, u: dict, select: list[str] | None = None) -> dict:
        fields = ["id", "displayName", "mail", "userPrincipalName", "jobTitle", "department", "accountEnabled"]
        if select:
            fields = ["id"] + [f for f in select if f in fields and f != "id"]
        return {f: u[f] for f in fields}

    def presence_of(self, u: dict) -> dict:
        if not u["teams"]:
            return {"id": u["id"], "availability": "PresenceUnknown", "activity": "PresenceUnknown"}
        return {"id": u["id"], **u["presence"]}

    # ------------------------------------------------------------------ chats and messages
    def chat_for(self, a: dict, b: dict, create: bool) -> dict | None:
        ids = sorted([a["id"], b["id"]])
        chat_id = f"19:{ids[0]}_{ids[1]}@unq.gbl.spaces"
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None and create:
                t = now()
                chat = {"id": chat_id, "topic": None, "createdDateTime": iso(t), "lastUpdatedDateTime": iso(t),
                        "chatType": "oneOnOne", "members": ids, "messages": {}}
                self.chats[chat_id] = chat
                # Teams records the chat's start as a system event, which clients must filter out.
                self._store(chat, {"messageType": "unknownFutureValue", "from": None,
                                   "body": {"contentType": "html", "content": "<systemEventMessage/>"},
                                   "eventDetail": {"@odata.type": "#microsoft.graph.membersAddedEventMessageDetail"}},
                            notify=False)
            return chat

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        self.last_message_ms = max(ms, self.last_message_ms + 1)
        return str(self.last_message_ms)

    def _store(self, chat: dict, fields: dict, notify: bool = True) -> dict:
        with self.lock:
            mid = self._next_id()
            t = now()
            msg = {"id": mid, "etag": mid, "messageType": "message", "createdDateTime": iso(t),
                   "lastModifiedDateTime": iso(t), "lastEditedDateTime": None, "deletedDateTime": None,
                   "chatId": chat["id"], "replyToId": None, "subject": None, "summary": None, "importance": "normal",
                   "locale": "en-us", "webUrl": None, "attachments": [], "mentions": [], "reactions": [],
                   "messageHistory": [], "eventDetail": None, **fields}
            chat["messages"][mid] = msg
            chat["lastUpdatedDateTime"] = iso(t)
        if notify:
            self.notify(chat["id"], mid, "created")
        return msg

    def post_message(self, chat: dict, user: dict, body: dict) -> dict:
        content_type = (body.get("contentType") or "text").lower()
        if content_type not in ("text", "html"):
            raise bad(f"Invalid value '{content_type}' for contentType.")
        frm = {"application": None, "device": None,
               "user": {"id": user["id"], "displayName": user["displayName"], "userIdentityType": "aadUser",
                        "tenantId": self.tenant_id}}
        return self._store(chat, {"from": frm, "body": {"contentType": content_type, "content": body.get("content", "")}})

    def message(self, chat_id: str, message_id: str) -> tuple[dict, dict]:
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None:
                raise not_found(f"Chat {chat_id} was not found.")
            msg = chat["messages"].get(message_id)
            if msg is None:
                raise not_found(f"Message {message_id} was not found.")
            return chat, msg

    def edit(self, chat_id: str, message_id: str, user: dict | None, body: dict) -> dict:
        chat, msg = self.message(chat_id, message_id)
        with self.lock:
            if user is not None and (msg.get("from") or {}).get("user", {}).get("id") != user["id"]:
                raise forbidden("Only the sender can edit a message.")
            if msg["deletedDateTime"]:
                raise bad("A deleted message cannot be edited.")
            t = iso(now())
            msg["body"] = {"contentType": (body.get("contentType") or "text").lower(), "content": body.get("content", "")}
            msg["lastEditedDateTime"] = msg["lastModifiedDateTime"] = t
        self.notify(chat_id, message_id, "updated")
        return msg

    def soft_delete(self, chat_id: str, message_id: str, user: dict | None, undo: bool = False) -> None:
        chat, msg = self.message(chat_id, message_id)
        with self.lock:
            if user is not None and (msg.get("from") or {}).get("user", {}).get("id") != user["id"]:
                raise forbidden("Only the sender can delete a message.")
            t = iso(now())
            if undo:
                msg["deletedDateTime"] = None
                msg["body"] = msg.pop("_deleted_body", msg["body"])
            else:
                if msg["deletedDateTime"]:
                    return
                msg["deletedDateTime"] = t
                msg["_deleted_body"] = msg["body"]
                # Deleted messages stay in the list with deletedDateTime set and their content emptied
                # (UNCONFIRMED in the reference: what a real tenant returns in body).
                msg["body"] = {"contentType": "html", "content": ""}
            msg["lastModifiedDateTime"] = t
        self.notify(chat_id, message_id, "updated" if undo else "deleted")

    def react(self, chat_id: str, message_id: str, user: dict, reaction: str, remove: bool = False) -> None:
        chat, msg = self.message(chat_id, message_id)
        if user["id"] not in chat["members"]:
            raise forbidden("The user is not a member of the chat.")
        with self.lock:
            t = iso(now())
            mine = [r for r in msg["reactions"] if r["user"]["user"]["id"] == user["id"] and r["reactionType"] == reaction]
            if remove:
                if not mine:
                    return
                msg["reactions"] = [r for r in msg["reactions"] if r not in mine]
                action = "reactionRemoved"
            else:
                if mine:
                    return
                msg["reactions"].append({
                    "reactionType": reaction, "displayName": reaction, "reactionContentUrl": None, "createdDateTime": t,
                    "user": {"application": None, "device": None,
                             "user": {"id": user["id"], "displayName": None, "userIdentityType": "aadUser"}}})
                action = "reactionAdded"
            msg["messageHistory"].append({"modifiedDateTime": t, "actions": action,
                                          "reaction": {"reactionType": reaction, "createdDateTime": t,
                                                       "user": {"user": {"id": user["id"]}}}})
            msg["lastModifiedDateTime"] = t
        self.notify(chat_id, message_id, "updated")

    def public_message(self, msg: dict, include_unknown: bool) -> dict:
        out = {k: v for k, v in msg.items() if not k.startswith("_")}
        if out["messageType"] == "unknownFutureValue" and include_unknown:
            out["messageType"] = "systemEventMessage"
        return out

    # ------------------------------------------------------------------ notifications
    def notify(self, chat_id: str, message_id: str, change: str) -> None:
        resource = f"chats('{chat_id}')/messages('{message_id}')"
        with self.lock:
            if not self.deliver:
                self.deliveries.append({"change_type": change, "resource": resource, "status": "dropped"})
                return
            t = now()
            for sub in list(self.subscriptions.values()):
                if sub["_chat"] != chat_id or change not in sub["changeType"].split(","):
                    continue
                if parse_time(sub["expirationDateTime"]) <= t:
                    continue
                item = {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": sub["expirationDateTime"],
                        "changeType": change, "clientState": sub.get("clientState"), "tenantId": self.tenant_id,
                        "resource": resource,
                        "resourceData": {"id": message_id, "@odata.type": "#Microsoft.Graph.chatMessage",
                                         "@odata.id": resource}}
                self.outbox.put((sub["notificationUrl"], {"value": [item]}, change, sub["id"]))

    def lifecycle(self, sub: dict, event: str) -> None:
        item = {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": sub["expirationDateTime"],
                "tenantId": self.tenant_id, "clientState": sub.get("clientState"), "lifecycleEvent": event,
                "resource": sub["resource"], "organizationId": self.tenant_id}
        url = sub.get("lifecycleNotificationUrl") or sub["notificationUrl"]
        self.outbox.put((url, {"value": [item]}, "lifecycle:" + event, sub["id"]))

    def _deliver_loop(self) -> None:
        while True:
            url, payload, change, sub_id = self.outbox.get()
            record = {"change_type": change, "subscription_id": sub_id,
                      "resource": payload["value"][0].get("resource"), "attempts": 0}
            for attempt in range(3):
                record["attempts"] = attempt + 1
                started = time.time()
                status = post_json(url, payload)
                record["status"], record["ms"] = status, int((time.time() - started) * 1000)
                if 200 <= status < 300:
                    break
                time.sleep(0.5 * (attempt + 1))
            with self.lock:
                self.deliveries.append(record)

    # ------------------------------------------------------------------ subscriptions
    def create_subscription(self, caller: dict, body: dict, app_id: str) -> dict:
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(key):
                raise bad(f"{key} is a required property for subscription creation.", "ValidationError")
        changes = [c.strip() for c in str(body["changeType"]).split(",")]
        if any(c not in ("created", "updated", "deleted") for c in changes):
            raise bad(f"Invalid changeType '{body['changeType']}'.", "ValidationError")
        m = re.fullmatch(r"/?chats(?:/|\(')([^/']+)(?:'\))?/messages", body["resource"])
        if not m:
            raise bad(f"Resource '{body['resource']}' is not supported by this emulator.", "ExtensionError")
        chat_id = m.group(1)
        with self.lock:
            chat = self.chats.get(chat_id)
        if chat is None:
            raise not_found(f"Chat {chat_id} was not found.")
        if caller.get("user") is not None and caller["user"]["id"] not in chat["members"]:
            raise forbidden("The caller is not a member of the chat.")
        if caller.get("user") is None and "Chat.Read.All" not in caller["roles"]:
            raise forbidden("Missing application permission Chat.Read.All.")
        expiry = parse_time(str(body["expirationDateTime"]))
        if expiry is None:
            raise bad("expirationDateTime is not a valid date.", "ValidationError")
        t = now()
        if expiry <= t:
            raise bad("Subscription expiration can only be in the future.", "ExtensionError")
        if expiry > t + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
            raise bad(f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in the future.",
                      "ExtensionError")
        if expiry > t + timedelta(hours=1) and not body.get("lifecycleNotificationUrl"):
            raise bad(LIFECYCLE_REQUIRED, "ValidationError")
        if len(body.get("clientState") or "") > 128:
            raise bad("clientState must be at most 128 characters.", "ValidationError")
        if body.get("includeResourceData") and not (body.get("encryptionCertificate") and body.get("encryptionCertificateId")):
            raise bad("encryptionCertificate and encryptionCertificateId are required when includeResourceData is true.",
                      "ValidationError")
        with self.lock:
            for other in self.subscriptions.values():
                if other["_chat"] == chat_id and other["applicationId"] == app_id and parse_time(other["expirationDateTime"]) > t:
                    raise GraphError(409, "Conflict", "A subscription for this resource already exists for this application.")
        for url in filter(None, [body["notificationUrl"], body.get("lifecycleNotificationUrl")]):
            if not validate_endpoint(url):
                raise bad("Subscription validation request failed. Notification endpoint must respond with 200 OK "
                          "to validation request.", "ValidationError")
        sub = {"id": str(uuid.uuid4()), "resource": body["resource"], "applicationId": app_id,
               "changeType": ",".join(changes), "clientState": body.get("clientState"),
               "notificationUrl": body["notificationUrl"],
               "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
               "expirationDateTime": iso(expiry), "creatorId": (caller.get("user") or {}).get("id") or app_id,
               "includeResourceData": bool(body.get("includeResourceData")),
               "latestSupportedTlsVersion": "v1_2", "notificationUrlAppId": None, "_chat": chat_id,
               "_renewals": 0, "_reauthorized": 0}
        with self.lock:
            self.subscriptions[sub["id"]] = sub
        return sub

    def live_subscription(self, sub_id: str) -> dict:
        with self.lock:
            sub = self.subscriptions.get(sub_id)
            if sub is not None and parse_time(sub["expirationDateTime"]) <= now():
                del self.subscriptions[sub_id]
                sub = None
        if sub is None:
            raise not_found(f"The object was not found.", "ResourceNotFound")
        return sub

    # ------------------------------------------------------------------ throttling
    def take_throttle(self, method: str, path: str) -> float | None:
        with self.lock:
            t = self.throttle
            if not t or t["count"] == 0:
                return None
            if t.get("method") and t["method"].upper() != method:
                return None
            if t.get("path") and t["path"] not in path:
                return None
            if t["count"] > 0:
                t["count"] -= 1
            return float(t.get("retry_after", 1))

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "tenant": self.name, "tenant_id": self.tenant_id,
                "users": list(self.users.values()),
                "chats": [{**{k: v for k, v in c.items() if k != "messages"},
                           "messages": [self.public_message(m, True) for m in c["messages"].values()]}
                          for c in self.chats.values()],
                "subscriptions": list(self.subscriptions.values()),
                "deliveries": list(self.deliveries),
                "requests": list(self.requests),
                "deliver": self.deliver,
            }


def post_json(url: str, payload: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:  # noqa: BLE001  (unreachable, timed out: a failed delivery)
        return 0


def validate_endpoint(url: str) -> bool:
    """Graph's handshake: POST url?validationToken=<opaque>; 200, text/plain, the decoded token, within 10 s."""
    token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
    sep = "&" if "?" in url else "?"
    req = urllib.request.Request(url + sep + urllib.parse.urlencode({"validationToken": token}), data=b"",
                                 method="POST", headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode("utf-8", "replace")
            ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            return r.status == 200 and ctype == "text/plain" and body == token
    except Exception:  # noqa: BLE001
        return False


class Server:
    def __init__(self):
        self.authority = identity.Authority()
        self.authority.resolve_user = self.resolve_user
        self.tenants: dict[str, Tenant] = {}
        self.lock = threading.Lock()
        demo = self.new_tenant(DEMO_TENANT, DEMO_CLIENT, f"{DEMO_CLIENT}-secret")
        for name, mail, title, dept, availability, activity in DEMO_USERS:
            demo.add_user({"displayName": name, "mail": mail, "jobTitle": title, "department": dept,
                           "teams": availability is not None,
                           "presence": {"availability": availability or "PresenceUnknown",
                                        "activity": activity or "PresenceUnknown"}})

    def new_tenant(self, name: str | None = None, client_id: str | None = None, secret: str | None = None) -> Tenant:
        name = name or "t" + uuid.uuid4().hex[:12]
        tenant = Tenant(name, client_id or f"{name}-app", secret or f"{name}-secret")
        self.authority.add_client({"tenant": name, "client_id": tenant.client_id, "client_secret": tenant.client_secret,
                                   "roles": list(APP_ROLES), "lifetime": 3600})
        with self.lock:
            self.tenants[name] = tenant
        return tenant

    def resolve_user(self, tenant_name: str, login: str):
        with self.lock:
            tenant = self.tenants.get(tenant_name)
        user = tenant.find_user(login) if tenant else None
        if user is None:
            return None, ("invalid_request", f"AADSTS50034: The user account {login} does not exist in the "
                                             f"{tenant_name} directory.")
        if not user["accountEnabled"]:
            return None, ("access_denied", "AADSTS50057: The user account is disabled.")
        if user["sign_in"] == "fail":
            return None, ("access_denied", "AADSTS50126: Error validating credentials due to invalid username "
                                           "or password.")
        if user["sign_in"] == "cancel":
            return None, ("access_denied", "AADSTS65004: User declined to consent to access the app.")
        if user.get("sign_in_as"):
            # The person picked another account in Microsoft's account picker.
            other = tenant.find_user(user["sign_in_as"])
            if other is not None:
                return other["id"], None
        return user["id"], None

    def tenant(self, name: str) -> Tenant | None:
        with self.lock:
            return self.tenants.get(name)


def make_handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, status: int, body=None, headers: dict | None = None, raw: bytes | None = None):
            data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json; odata.metadata=minimal; charset=utf-8")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.dispatch("GET")

        def do_POST(self):
            self.dispatch("POST")

        def do_PATCH(self):
            self.dispatch("PATCH")

        def do_DELETE(self):
            self.dispatch("DELETE")

        def base(self) -> str:
            return f"http://{self.headers.get('Host') or '127.0.0.1'}"

        def dispatch(self, method: str):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            split = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(split.path)
            if path == "/health":
                return self.send(200, {"ok": True})
            if path.startswith("/_emulator/graph"):
                return self.control(method, path[len("/_emulator/graph"):], raw)
            if path == API or path.startswith(API + "/"):
                return self.api(method, path[len(API):].strip("/"), split.query, raw)
            answer = server.authority.handle_authorize(method, self.path)
            if answer is not None:
                status, headers, data = answer
                return self.send(status, None, headers, data)
            answer = server.authority.handle(method, self.path, raw, self.headers.get("Content-Type", ""))
            if answer is None:
                return self.send(404, {"error": "not_found"})
            return self.send(*answer)

        # -------------------------------------------------------------- test controls
        def control(self, method: str, rest: str, raw: bytes):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self.send(400, {"error": "control bodies are JSON"})
            if rest == "/tenants" and method == "POST":
                tenant = server.new_tenant()
                users = [tenant.add_user(u) for u in body.get("users", [])]
                return self.send(200, {"tenant": tenant.name, "tenant_id": tenant.tenant_id,
                                       "client_id": tenant.client_id, "client_secret": tenant.client_secret,
                                       "authority": self.base(), "graph_url": self.base() + API,
                                       "users": users})
            m = re.fullmatch(r"/([^/]+)/([a-z-]+)", rest)
            tenant = server.tenant(m.group(1)) if m else None
            if tenant is None:
                return self.send(404, {"error": f"no tenant in {rest}"})
            action = m.group(2)
            try:
                return self.send(200, self.control_action(tenant, method, action, body))
            except GraphError as e:
                return self.send(e.status, error_body(e.code, e.message))
            except KeyError as e:
                return self.send(400, {"error": f"missing {e}"})

        def control_action(self, tenant: Tenant, method: str, action: str, body: dict) -> dict:
            if method == "GET" and action == "state":
                return tenant.snapshot()
            if action == "users":
                if "generate" in body:
                    start = len(tenant.users)
                    made = [tenant.add_user({"displayName": f"Generated User {start + i:05d}",
                                             "mail": f"gen{start + i:05d}@{tenant.name}.example",
                                             "jobTitle": "Colleague"}) for i in range(int(body["generate"]))]
                    return {"added": len(made)}
                return {"users": [tenant.add_user(u) for u in body.get("users", [])]}
            if action == "user":
                user = tenant.find_user(body.get("id") or body.get("mail"))
                if user is None:
                    raise not_found("no such user")
                with tenant.lock:
                    for k in ("teams", "sign_in", "sign_in_as", "presence", "accountEnabled", "displayName", "jobTitle",
                              "department"):
                        if k in body:
                            user[k] = body[k]
                return user
            if action == "send":
                sender = tenant.find_user(body["from"])
                if sender is None:
                    raise not_found("no such sender")
                if body.get("chat_id"):
                    with tenant.lock:
                        chat = tenant.chats.get(body["chat_id"])
                else:
                    other = tenant.find_user(body["to"])
                    chat = tenant.chat_for(sender, other, create=False) if other else None
                if chat is None or sender["id"] not in chat["members"]:
                    # The agent writes first: until then there is no chat for the Teams user to answer in.
                    raise not_found("There is no chat between these users yet.")
                return tenant.post_message(chat, sender, {"content": body.get("text", ""),
                                                          "contentType": body.get("content_type", "html")})
            if action in ("edit", "delete", "undelete"):
                user = tenant.find_user(body["user"]) if body.get("user") else None
                if action == "edit":
                    return tenant.edit(body["chat_id"], body["message_id"], user,
                                       {"content": body.get("text", ""), "contentType": body.get("content_type", "html")})
                tenant.soft_delete(body["chat_id"], body["message_id"], user, undo=action == "undelete")
                return {"ok": True}
            if action in ("react", "unreact"):
                user = tenant.find_user(body["user"])
                if user is None:
                    raise not_found("no such user")
                tenant.react(body["chat_id"], body["message_id"], user, body.get("reaction", "like"),
                             remove=action == "unreact")
                return {"ok": True}
            if action == "throttle":
                with tenant.lock:
                    tenant.throttle = {"count": int(body.get("count", -1)), "retry_after": body.get("retry_after", 1),
                                       "method": body.get("method"), "path": body.get("path")}
                return {"ok": True}
            if action == "notifications":
                with tenant.lock:
                    tenant.deliver = bool(body.get("deliver", True))
                return {"ok": True}
            if action == "lifecycle":
                sub = tenant.live_subscription(body["subscription_id"])
                event = body.get("event", "reauthorizationRequired")
                if event == "subscriptionRemoved":
                    with tenant.lock:
                        tenant.subscriptions.pop(sub["id"], None)
                tenant.lifecycle(sub, event)
                return {"ok": True}
            if action == "expire":
                with tenant.lock:
                    sub = tenant.subscriptions.get(body["subscription_id"])
                    if sub is None:
                        raise not_found("no such subscription")
                    sub["expirationDateTime"] = iso(now() - timedelta(seconds=1))
                return {"ok": True}
            raise not_found(f"unknown control {action}")

        # -------------------------------------------------------------- Graph
        def api(self, method: str, rest: str, raw_query: str, raw: bytes):
            auth = self.headers.get("Authorization") or ""
            claims = server.authority.validate(auth[7:].strip()) if auth[:7].lower() == "bearer " else None
            tenant = server.tenant(claims["tenant"]) if claims else None
            entry = {"method": method, "path": rest, "query": urllib.parse.unquote(raw_query),
                     "app_only": bool(claims and claims["grant"] == "client_credentials"), "status": None}
            if tenant is not None:
                with tenant.lock:
                    tenant.requests.append(entry)
            try:
                if tenant is None:
                    code = "InvalidAuthenticationToken"
                    message = "Access token is empty." if not auth else "Access token has expired or is not yet valid."
                    raise GraphError(401, code, message, {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'})
                retry_after = tenant.take_throttle(method, rest)
                if retry_after is not None:
                    raise GraphError(429, "TooManyRequests", "Please retry again later.",
                                     {"Retry-After": f"{retry_after:g}"})
                caller = {"app_only": claims["grant"] == "client_credentials", "roles": claims.get("roles") or [],
                          "client_id": claims["client_id"], "user": None, "scope": claims.get("scope", "")}
                if not caller["app_only"]:
                    caller["user"] = tenant.find_user(claims["user"])
                    if caller["user"] is None:
                        raise GraphError(401, "InvalidAuthenticationToken", "The user of the token is unknown.")
                body = None
                if method in ("POST", "PATCH") and raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise bad("Unable to read JSON request payload.")
                query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
                status, out, headers = self.route(tenant, caller, method, rest, query, body or {})
                entry["status"] = status
                self.send(status, out, headers)
            except GraphError as e:
                entry["status"] = e.status
                if e.status == 429:
                    entry["throttled"] = True
                self.send(e.status, error_body(e.code if e.status != 429 else "TooManyRequests", e.message)
                          if e.status != 429 else {"error": {"code": "TooManyRequests", "message": e.message,
                                                             "innerError": {"code": "429", "status": "429",
                                                                            "message": "Please retry after",
                                                                            "date": now().strftime("%Y-%m-%dT%H:%M:%S"),
                                                                            "request-id": str(uuid.uuid4())}}},
                          e.headers)

        def route(self, tenant: Tenant, caller: dict, method: str, rest: str, query: dict, body: dict):
            seg = rest.split("/") if rest else []
            base = self.base() + API
            user = caller["user"]

            def need_user() -> dict:
                if user is None:
                    raise bad("/me request is only valid with delegated authentication flow.")
                return user

            def need_role(role: str):
                if caller["app_only"] and role not in caller["roles"]:
                    raise forbidden(f"Missing application permission {role}.", "Authorization_RequestDenied")

            # /me -> /users/{me}
            if seg and seg[0] == "me":
                seg = ["users", need_user()["id"]] + seg[1:]

            if seg == ["users"] and method == "GET":
                need_role("User.Read.All")
                return 200, self.list_users(tenant, query, base), {}
            if len(seg) >= 2 and seg[0] == "users":
                target = tenant.find_user(seg[1])
                if target is None:
                    raise not_found(f"Resource '{seg[1]}' does not exist or one of its queried reference-property "
                                    f"objects are not present.", "Request_ResourceNotFound")
                if len(seg) == 2 and method == "GET":
                    need_role("User.Read.All")
                    select = [s for s in query.get("$select", "").split(",") if s]
                    return 200, {"@odata.context": f"{base}/$metadata#users/$entity",
                                 **tenant.public_user(target, select)}, {}
                if seg[2:] == ["presence"] and method == "GET":
                    need_role("Presence.Read.All")
                    return 200, tenant.presence_of(target), {}
                if seg[2:] == ["licenseDetails"] and method == "GET":
                    if caller["app_only"]:
                        need_role("User.Read.All")
                    plans = [{"servicePlanId": str(uuid.uuid5(NS, "EXCHANGE_S_STANDARD")),
                              "servicePlanName": "EXCHANGE_S_STANDARD", "provisioningStatus": "Success",
                              "appliesTo": "User"}]
                    if target["teams"]:
                        plans.append({"servicePlanId": "57ff2da0-773e-42df-b2af-ffb7a2317929",
                                      "servicePlanName": "TEAMS1", "provisioningStatus": "Success",
                                      "appliesTo": "User"})
                    return 200, {"value": [{"id": str(uuid.uuid5(NS, target["id"] + ":sku")),
                                            "skuId": str(uuid.uuid5(NS, "sku")), "skuPartNumber": "O365_BUSINESS",
                                            "servicePlans": plans}]}, {}
                if len(seg) == 7 and seg[2] == "chats" and seg[4] == "messages" and seg[6] in ("softDelete", "undoSoftDelete") \
                        and method == "POST":
                    if caller["app_only"]:
                        raise forbidden("softDelete is not supported in application context.")
                    if need_user()["id"] != target["id"]:
                        raise forbidden("A user can only delete their own messages.")
                    tenant.soft_delete(seg[3], seg[5], target, undo=seg[6] == "undoSoftDelete")
                    return 204, None, {}
                raise not_found(f"Resource not found for the segment '{'/'.join(seg[2:])}'.")
            if seg == ["communications", "getPresencesByUserId"] and method == "POST":
                need_role("Presence.Read.All")
                ids = body.get("ids")
                if not isinstance(ids, list) or not ids:
                    raise bad("ids is required.")
                if len(ids) > 650:
                    raise bad(f"The number of ids ({len(ids)}) exceeds the maximum of 650.")
                found = [tenant.find_user(i) for i in ids]
                return 200, {"value": [tenant.presence_of(u) for u in found if u is not None]}, {}
            if seg == ["chats"] and method == "POST":
                return self.create_chat(tenant, caller, body, base)
            if len(seg) >= 2 and seg[0] == "chats":
                with tenant.lock:
                    chat = tenant.chats.get(seg[1])
                if chat is None:
                    raise not_found(f"Chat {seg[1]} was not found.")
                if user is not None and user["id"] not in chat["members"]:
                    raise forbidden("The caller is not a member of the chat.")
                if len(seg) == 2 and method == "GET":
                    return 200, {k: v for k, v in chat.items() if k not in ("messages", "members")}, {}
                if seg[2:3] == ["messages"]:
                    return self.messages(tenant, caller, chat, method, seg[3:], query, body, base)
                raise not_found()
            if seg and seg[0] == "subscriptions":
                return self.subscriptions(tenant, caller, method, seg[1:], body)
            raise bad(f"Resource not found for the segment '{seg[0] if seg else ''}'.")

        def list_users(self, tenant: Tenant, query: dict, base: str) -> dict:
            token = query.get("$skiptoken")
            if token:
                with tenant.lock:
                    page = tenant.skiptokens.pop(token, None)
                if page is None:
                    raise bad("The specified page token value has expired and can no longer be included in your "
                              "request.", "Directory_ExpiredPageToken")
                top, offset, select = page["top"], page["offset"], page["select"]
            else:
                raw_top = query.get("$top", "100")
                try:
                    top = int(raw_top)
                except ValueError:
                    top = -1
                if not 1 <= top <= 999:
                    # [OBS] the message seen from a real tenant; the code is a best guess.
                    raise bad(f"Invalid page size specified: '{raw_top}'. Must be between 1 and 999 inclusive.",
                              "Request_UnsupportedQuery")
                offset, select = 0, [s for s in query.get("$select", "").split(",") if s]
            with tenant.lock:
                users = sorted(tenant.users.values(), key=lambda u: u["id"])
                out = {"@odata.context": f"{base}/$metadata#users",
                       "value": [tenant.public_user(u, select) for u in users[offset:offset + top]]}
                if offset + top < len(users):
                    nxt = secrets.token_urlsafe(24)
                    tenant.skiptokens[nxt] = {"top": top, "offset": offset + top, "select": select}
                    params = {"$top": str(top), "$skiptoken": nxt}
                    if select:
                        params["$select"] = ",".join(select)
                    out["@odata.nextLink"] = f"{base}/users?" + urllib.parse.urlencode(params, safe="$,")
            return out

        def create_chat(self, tenant: Tenant, caller: dict, body: dict, base: str):
            if caller["app_only"] and "Chat.Create" not in caller["roles"]:
                raise forbidden("Missing application permission Chat.Create.")
            if body.get("chatType") != "oneOnOne":
                raise bad("Only oneOnOne chats are supported by this emulator." if body.get("chatType") == "group"
                          else "chatType is required and must be oneOnOne or group.")
            members = body.get("members") or []
            if len(members) != 2:
                raise bad("A oneOnOne chat must have exactly two members.")
            users = []
            for m in members:
                if m.get("@odata.type") != "#microsoft.graph.aadUserConversationMember":
                    raise bad("Members must be #microsoft.graph.aadUserConversationMember.")
                u = tenant.find_user(m.get("user@odata.bind"))
                if u is None:
                    raise not_found(f"User {m.get('user@odata.bind')} was not found.")
                users.append(u)
            if users[0]["id"] == users[1]["id"]:
                raise bad("A oneOnOne chat needs two different users.")
            if caller["user"] is not None and caller["user"]["id"] not in (users[0]["id"], users[1]["id"]):
                raise bad("The caller must be one of the members of the chat.")
            for u in users:
                if not u["teams"]:
                    raise forbidden(f"The user {u['id']} does not have a Microsoft Teams license.")
            chat = tenant.chat_for(users[0], users[1], create=True)
            return 201, {"@odata.context": f"{base}/$metadata#chats/$entity",
                         **{k: v for k, v in chat.items() if k not in ("messages", "members")}}, {}

        def messages(self, tenant: Tenant, caller: dict, chat: dict, method: str, seg: list, query: dict, body: dict,
                     base: str):
            user = caller["user"]
            include_unknown = "include-unknown-enum-members" in (self.headers.get("Prefer") or "")
            if not seg and method == "POST":
                if caller["app_only"]:
                    raise GraphError(401, "Unauthorized", MIGRATION_ONLY)
                content = (body.get("body") or {})
                if not isinstance(content, dict) or content.get("content") in (None, ""):
                    raise bad("body.content is required.")
                msg = tenant.post_message(chat, user, content)
                return 201, {"@odata.context": f"{base}/$metadata#chats('{chat['id']}')/messages/$entity",
                             **tenant.public_message(msg, include_unknown)}, {}
            if not seg and method == "GET":
                if caller["app_only"] and "Chat.Read.All" not in caller["roles"]:
                    raise forbidden("Missing application permission Chat.Read.All.")
                return 200, self.list_messages(tenant, chat, query, base, include_unknown), {}
            if len(seg) == 1:
                with tenant.lock:
                    msg = chat["messages"].get(seg[0])
                if msg is None:
                    raise not_found(f"Message {seg[0]} was not found.")
                if method == "GET":
                    return 200, tenant.public_message(msg, include_unknown), {}
                if method == "PATCH":
                    if caller["app_only"]:
                        raise forbidden("Only policyViolation can be updated in application context.")
                    tenant.edit(chat["id"], seg[0], user, body.get("body") or {})
                    return 204, None, {}
            if len(seg) == 2 and seg[1] in ("setReaction", "unsetReaction") and method == "POST":
                if caller["app_only"]:
                    raise forbidden("setReaction is not supported in application context.")
                if not body.get("reactionType"):
                    raise bad("reactionType is required.")
                tenant.react(chat["id"], seg[0], user, body["reactionType"], remove=seg[1] == "unsetReaction")
                return 204, None, {}
            raise not_found()

        def list_messages(self, tenant: Tenant, chat: dict, query: dict, base: str, include_unknown: bool) -> dict:
            token = query.get("$skiptoken")
            if token:
                with tenant.lock:
                    page = tenant.skiptokens.pop(token, None)
                if page is None:
                    raise bad("The skip token is not valid.")
                top, order, since, before, offset = page["top"], page["order"], page["since"], page["before"], page["offset"]
            else:
                raw_top = query.get("$top", "20")
                try:
                    top = int(raw_top)
                except ValueError:
                    top = -1
                if not 1 <= top <= 50:
                    # The reference gives the limit (50), not the wording: this mirrors the /users error.
                    raise bad(f"Invalid page size specified: '{raw_top}'. Must be between 1 and 50 inclusive.")
                orderby = query.get("$orderby", "lastModifiedDateTime desc").strip()
                if orderby not in ("lastModifiedDateTime desc", "createdDateTime desc"):
                    raise bad(f"$orderby '{orderby}' is not supported. Supported: lastModifiedDateTime desc, "
                              "createdDateTime desc.")
                order = orderby.split()[0]
                since = before = None
                flt = query.get("$filter", "").strip()
                if flt:
                    m = re.fullmatch(r"(lastModifiedDateTime|createdDateTime)\s+(gt|lt)\s+(\S+)", flt)
                    if not m:
                        raise bad(f"The $filter '{flt}' is not supported.")
                    t = parse_time(m.group(3))
                    if t is None:
                        raise bad(f"'{m.group(3)}' is not a valid DateTimeOffset.")
                    # Only honoured when $orderby uses the same property; otherwise silently ignored.
                    if m.group(1) == order:
                        if m.group(2) == "gt":
                            since = iso(t)
                        else:
                            before = iso(t)
                offset = 0
            with tenant.lock:
                msgs = sorted(chat["messages"].values(), key=lambda m: (m[order], m["id"]), reverse=True)
                if since:
                    msgs = [m for m in msgs if parse_time(m[order]) > parse_time(since)]
                if before:
                    msgs = [m for m in msgs if parse_time(m[order]) < parse_time(before)]
                page_msgs = msgs[offset:offset + top]
                out = {"@odata.context": f"{base}/$metadata#chats('{chat['id']}')/messages",
                       "@odata.count": len(page_msgs),
                       "value": [tenant.public_message(m, include_unknown) for m in page_msgs]}
                if offset + top < len(msgs):
                    nxt = secrets.token_urlsafe(24)
                    tenant.skiptokens[nxt] = {"top": top, "order": order, "since": since, "before": before,
                                              "offset": offset + top}
                    out["@odata.nextLink"] = (f"{base}/chats/{urllib.parse.quote(chat['id'], safe=':@')}/messages?"
                                              + urllib.parse.urlencode({"$skiptoken": nxt}, safe="$"))
            return out

        def subscriptions(self, tenant: Tenant, caller: dict, method: str, seg: list, body: dict):
            app_id = caller["client_id"]
            if not seg and method == "POST":
                sub = tenant.create_subscription(caller, body, app_id)
                return 201, public_subscription(sub), {}
            if not seg and method == "GET":
                with tenant.lock:
                    subs = [public_subscription(s) for s in tenant.subscriptions.values() if s["applicationId"] == app_id]
                return 200, {"value": subs}, {}
            sub = tenant.live_subscription(seg[0])
            if sub["applicationId"] != app_id:
                raise forbidden("The subscription belongs to another application.")
            if len(seg) == 1 and method == "GET":
                return 200, public_subscription(sub), {}
            if len(seg) == 1 and method == "PATCH":
                if "lifecycleNotificationUrl" in body and not sub.get("lifecycleNotificationUrl"):
                    raise bad("lifecycleNotificationUrl cannot be added to an existing subscription.", "ValidationError")
                expiry = parse_time(str(body.get("expirationDateTime") or ""))
                if expiry is None:
                    raise bad("expirationDateTime is required.", "ValidationError")
                t = now()
                if expiry <= t or expiry > t + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
                    raise bad(f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in the future.",
                              "ExtensionError")
                if expiry > t + timedelta(hours=1) and not sub.get("lifecycleNotificationUrl"):
                    raise bad(LIFECYCLE_REQUIRED, "ValidationError")
                with tenant.lock:
                    sub["expirationDateTime"] = iso(expiry)
                    sub["_renewals"] += 1
                return 200, public_subscription(sub), {}
            if len(seg) == 1 and method == "DELETE":
                with tenant.lock:
                    tenant.subscriptions.pop(sub["id"], None)
                return 204, None, {}
            if seg[1:] == ["reauthorize"] and method == "POST":
                with tenant.lock:
                    sub["_reauthorized"] += 1
                return 204, None, {}
            raise not_found()

    return Handler


def public_subscription(sub: dict) -> dict:
    return {k: v for k, v in sub.items() if not k.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=45710)
    args = ap.parse_args()
    server = Server()
    http = ThreadingHTTPServer((args.host, args.port), make_handler(server))
    http.daemon_threads = True
    host, port = http.server_address[:2]
    url = f"http://{host}:{port}"
    print(f"Graph emulator on {url}  (Graph {url}{API}, token endpoint {url}/{DEMO_TENANT}/oauth2/v2.0/token)")
    print(f"  tenant {DEMO_TENANT}; client {DEMO_CLIENT} / secret {DEMO_CLIENT}-secret", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
