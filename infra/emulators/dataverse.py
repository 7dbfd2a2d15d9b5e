"""A strict local emulator of the Dataverse Web API (v9.2) subset Mailroom's Dynamics 365 handoff uses.

For the tests, and for a demo without a Dynamics tenant:

    python3 infra/emulators/dataverse.py --port 45690

It serves, on one port:
  POST /{tenant}/oauth2/v2.0/token          the token endpoint (identity.Authority: Microsoft-shaped errors)
  /api/data/v9.2/...                         the Web API subset below
  /_emulator/dataverse/...                   test controls (reset, inject 429/5xx/403, throttle, privileges, seed, state)
  POST /_emulator/dataverse/environments     a new isolated environment at /env/<id> (its own records, clients,
                                             faults), so tests sharing one emulator cannot disturb each other
  /_emulator/<action>                        the identity authority's controls (clients, revoke, disable, ...)
  GET /health

Web API subset (reference: ../shared/reference/dataverse-and-graph.md, section 9):
  contacts, incidents, emails (with email_activity_parties), annotations, queues, queueitems, systemusers,
  teams, accounts, organizations: GET collection ($select, $filter, $orderby, $top, $count, odata.maxpagesize
  paging with an opaque $skiptoken), GET one, POST (204 + OData-EntityId, or 201 with Prefer:
  return=representation), PATCH, DELETE;
  WhoAmI; systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges(); queues(<id>)/Microsoft.Dynamics.
  CRM.AddToQueue; EntityDefinitions(LogicalName='incident')/Attributes[(LogicalName='x')]/Microsoft.Dynamics.
  CRM.PicklistAttributeMetadata with $expand=OptionSet.

A request is checked in this order, as the service does: entity set (404 0x8006088a), bearer token (401 with
WWW-Authenticate), injected faults and throttling (429 + Retry-After 0x80072322, 5xx, 403), Content-Type, body
keys (unknown property / undeclared navigation property 0x80048d19), values (label text in a choice column
0x80048d19, option out of range 0x8004431A, too long 0x80044331, read-only columns), the incident's customer
(0x80044410 / 0x8004440f), bind targets (0x80040217), privileges (403 0x80040220 naming prv<Verb><Entity>),
duplicate primary key (412 0x80040237), the upload limit on notes (0x80044a02). Lengths are counted in UTF-16
code units, as .NET does.

The built-in environment (printed at start): tenant "mailroom-demo"; clients "mailroom-handoff" (every privilege
the handoff needs) and "mailroom-limited" (lacks prvCreateIncident), secrets "<client>-secret"; queues
"Support" and "Billing"; a user "Ana Agent" and a team "Support Team"; custom choice columns on incident:
new_region (labels in English and French), new_productline, new_contactreason (two options labelled "Other").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import identity  # noqa: E402  (the shared token authority)

API = "/api/data/v9.2"
NS = uuid.UUID("6f1c9c52-4c7e-4d0e-9a51-5c0f3d1a9b10")
TENANT = "mailroom-demo"
HELP_LINK = "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a{code}&client=platform"


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


# ---------------------------------------------------------------------------------------------- schema


class Col:
    def __init__(self, kind, max_len=None, options=None, create=True, update=True, read_only=False, targets=None):
        self.kind = kind  # string memo picklist state status bool int guid datetime lookup
        self.max_len = max_len
        self.options = options  # picklist: list of (value, {lang: label})
        self.create = create
        self.update = update
        self.read_only = read_only
        self.targets = targets  # lookup: entity sets


def picklist(*options):
    return Col("picklist", options=[(v, labels if isinstance(labels, dict) else {1033: labels}) for v, labels in options])


class Table:
    def __init__(self, entity_set, logical, pk, otc, privilege, columns, navs):
        self.set = entity_set
        self.logical = logical
        self.pk = pk
        self.otc = otc
        self.privilege = privilege  # prv<Verb><privilege>
        self.columns = columns
        self.navs = navs  # navigation property -> (lookup column, [target sets])


COMMON = lambda: {  # noqa: E731
    "createdon": Col("datetime", read_only=True),
    "modifiedon": Col("datetime", read_only=True),
    "ownerid": Col("lookup", targets=["systemusers", "teams"]),
}

STATE = lambda: Col("state", options=[(0, "Active"), (1, "Inactive")], create=False)  # noqa: E731
STATUS = lambda: Col("status")  # noqa: E731

TABLES: dict[str, Table] = {}


def table(t: Table):
    TABLES[t.set] = t


table(Table("contacts", "contact", "contactid", 2, "Contact", {
    "contactid": Col("guid", update=False),
    "firstname": Col("string", 50),
    "lastname": Col("string", 50),
    "fullname": Col("string", 160, read_only=True),
    "emailaddress1": Col("string", 100),
    "emailaddress2": Col("string", 100),
    "emailaddress3": Col("string", 100),
    "mobilephone": Col("string", 50),
    "telephone1": Col("string", 50),
    "description": Col("memo", 2000),
    "statecode": STATE(),
    "statuscode": STATUS(),
    "parentcustomerid": Col("lookup", targets=["accounts", "contacts"]),
    **COMMON(),
}, {
    "parentcustomerid_account": ("parentcustomerid", ["accounts"]),
    "parentcustomerid_contact": ("parentcustomerid", ["contacts"]),
    "ownerid": ("ownerid", ["systemusers", "teams"]),
}))

table(Table("accounts", "account", "accountid", 1, "Account", {
    "accountid": Col("guid", update=False),
    "name": Col("string", 160),
    "emailaddress1": Col("string", 100),
    "statecode": STATE(),
    "statuscode": STATUS(),
    **COMMON(),
}, {"ownerid": ("ownerid", ["systemusers", "teams"])}))

table(Table("incidents", "incident", "incidentid", 112, "Incident", {
    "incidentid": Col("guid", update=False),
    "title": Col("string", 200),
    "description": Col("memo", 2000),
    "caseorigincode": picklist((1, "Phone"), (2, "Email"), (3, "Web"), (2483, "Facebook"), (3986, "Twitter"),
                               (700610000, "IoT")),
    "prioritycode": picklist((1, "High"), (2, "Normal"), (3, "Low")),
    "casetypecode": picklist((1, "Question"), (2, "Problem"), (3, "Request")),
    "severitycode": picklist((1, "Default Value")),
    "new_region": picklist((100000000, {1033: "North America", 1036: "Amérique du Nord"}),
                           (100000001, {1033: "Europe", 1036: "Europe"}),
                           (100000002, {1033: "Asia Pacific", 1036: "Asie-Pacifique"})),
    "new_productline": picklist((100000000, "Printers"), (100000001, "Scanners"), (100000002, "Accessories")),
    "new_contactreason": picklist((100000000, "Other"), (100000001, "Refund"), (100000002, "Other")),
    "statecode": Col("state", options=[(0, "Active"), (1, "Resolved"), (2, "Canceled")], create=False),
    "statuscode": STATUS(),
    "ticketnumber": Col("string", 100, update=False),
    "emailaddress": Col("string", 100),
    "customerid": Col("lookup", targets=["accounts", "contacts"]),
    "primarycontactid": Col("lookup", targets=["contacts"]),
    "parentcaseid": Col("lookup", targets=["incidents"]),
    **COMMON(),
}, {
    "customerid_contact": ("customerid", ["contacts"]),
    "customerid_account": ("customerid", ["accounts"]),
    "primarycontactid": ("primarycontactid", ["contacts"]),
    "parentcaseid": ("parentcaseid", ["incidents"]),
    "ownerid": ("ownerid", ["systemusers", "teams"]),
}))

table(Table("emails", "email", "activityid", 4202, "Activity", {
    "activityid": Col("guid", update=False),
    "subject": Col("string", 400),
    "description": Col("memo", 1073741823),
    "directioncode": Col("bool"),
    "statecode": Col("state", options=[(0, "Open"), (1, "Completed"), (2, "Canceled")], create=False),
    "statuscode": STATUS(),
    "regardingobjectid": Col("lookup", targets=["incidents", "contacts", "accounts"]),
    **COMMON(),
}, {
    "regardingobjectid_incident_email": ("regardingobjectid", ["incidents"]),
    "regardingobjectid_contact_email": ("regardingobjectid", ["contacts"]),
    "regardingobjectid_account_email": ("regardingobjectid", ["accounts"]),
    "ownerid": ("ownerid", ["systemusers", "teams"]),
}))

ACTIVITYPARTY = Table("activityparties", "activityparty", "activitypartyid", 135, "Activity", {
    "activitypartyid": Col("guid"),
    "participationtypemask": picklist(*[(i, n) for i, n in enumerate(
        ["Sender", "To Recipient", "CC Recipient", "BCC Recipient", "Required attendee", "Optional attendee",
         "Organizer", "Regarding", "Owner", "Resource", "Customer", "Chat Participant"], start=1)]),
    "addressused": Col("string", 320),
    "partyid": Col("lookup", targets=["contacts", "accounts", "systemusers", "queues"]),
}, {
    "partyid_contact": ("partyid", ["contacts"]),
    "partyid_account": ("partyid", ["accounts"]),
    "partyid_systemuser": ("partyid", ["systemusers"]),
    "partyid_queue": ("partyid", ["queues"]),
})

table(Table("annotations", "annotation", "annotationid", 5, "Note", {
    "annotationid": Col("guid", update=False),
    "subject": Col("string", 500),
    "notetext": Col("memo", 100000),
    "filename": Col("string", 255),
    "mimetype": Col("string", 256),
    "documentbody": Col("memo", None),
    "isdocument": Col("bool", read_only=True),
    "filesize": Col("int", read_only=True),
    "objectid": Col("lookup", targets=["incidents", "contacts", "accounts"]),
    **COMMON(),
}, {
    "objectid_incident": ("objectid", ["incidents"]),
    "objectid_contact": ("objectid", ["contacts"]),
    "objectid_account": ("objectid", ["accounts"]),
    "ownerid": ("ownerid", ["systemusers", "teams"]),
}))

table(Table("queues", "queue", "queueid", 2020, "Queue", {
    "queueid": Col("guid", update=False),
    "name": Col("string", 400),
    "statecode": STATE(),
    **COMMON(),
}, {"ownerid": ("ownerid", ["systemusers", "teams"])}))

table(Table("queueitems", "queueitem", "queueitemid", 2029, "QueueItem", {
    "queueitemid": Col("guid", update=False),
    "title": Col("string", 300, read_only=True),
    "enteredon": Col("datetime", read_only=True),
    "statecode": STATE(),
    "queueid": Col("lookup", targets=["queues"], update=False),
    "objectid": Col("lookup", targets=["incidents", "emails"]),
    "workerid": Col("lookup", targets=["systemusers", "teams"]),
    **COMMON(),
}, {
    "queueid": ("queueid", ["queues"]),
    "objectid_incident": ("objectid", ["incidents"]),
    "objectid_email": ("objectid", ["emails"]),
    "workerid_systemuser": ("workerid", ["systemusers"]),
    "workerid_team": ("workerid", ["teams"]),
}))

table(Table("systemusers", "systemuser", "systemuserid", 8, "User", {
    "systemuserid": Col("guid", update=False),
    "fullname": Col("string", 200, read_only=True),
    "applicationid": Col("guid"),
    "internalemailaddress": Col("string", 100),
    "queueid": Col("lookup", targets=["queues"]),
}, {}))

table(Table("teams", "team", "teamid", 9, "Team", {
    "teamid": Col("guid", update=False),
    "name": Col("string", 160),
    "queueid": Col("lookup", targets=["queues"]),
}, {}))

table(Table("organizations", "organization", "organizationid", 1019, "Organization", {
    "organizationid": Col("guid", update=False),
    "name": Col("string", 160),
    "maxuploadfilesize": Col("int"),
}, {}))

VERBS = ["Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share"]
ALL_PRIVILEGES = sorted({f"prv{v}{t.privilege}" for t in list(TABLES.values()) for v in VERBS})

DEFAULT_CLIENTS = [
    {"tenant": TENANT, "client_id": "mailroom-handoff", "client_secret": "mailroom-handoff-secret",
     "name": "# Mailroom Handoff", "revoke": []},
    {"tenant": TENANT, "client_id": "mailroom-limited", "client_secret": "mailroom-limited-secret",
     "name": "# Mailroom Limited", "revoke": ["prvCreateIncident"]},
]

ORG_ID = gid("organization")
BU_ID = gid("business-unit")
SEED_IDS = {
    "support_queue": gid("queue:support"),
    "billing_queue": gid("queue:billing"),
    "ana": gid("user:ana"),
    "support_team": gid("team:support"),
}


class ApiError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def payload_error(entity_set, inner):
    return ApiError(400, "0x80048d19",
                    f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more information "
                    f"on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
                    f"InnerException : {inner}")


def not_found_record(logical, rid, status=404):
    return ApiError(status, "0x80040217", f"{logical} With Id = {rid} Does Not Exist")


# ---------------------------------------------------------------------------------------------- $filter


class FilterError(Exception):
    pass


GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?")


def lex(text):
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            tokens.append((c, c, i))
            i += 1
        elif c == "'":
            start, i, buf = i, i + 1, []
            while True:
                if i >= n:
                    raise FilterError(f"There is an unterminated literal at position {n} in '{text}'.")
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            tokens.append(("str", "".join(buf), start))
        else:
            m = GUID_RE.match(text, i)
            if m and (m.end() == n or not (text[m.end()].isalnum() or text[m.end()] == "_")):
                tokens.append(("guid", m.group(0).lower(), i))
                i = m.end()
                continue
            m = DATE_RE.match(text, i)
            if m and "-" in m.group(0) and (m.end() == n or not text[m.end()].isalnum()):
                tokens.append(("date", m.group(0), i))
                i = m.end()
                continue
            m = re.compile(r"-?\d+(\.\d+)?").match(text, i)
            if m:
                tokens.append(("num", float(m.group(0)) if "." in m.group(0) else int(m.group(0)), i))
                i = m.end()
                continue
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*").match(text, i)
            if not m:
                raise FilterError(f"Syntax error: character '{c}' is not valid at position {i} in '{text}'.")
            tokens.append(("id", m.group(0), i))
            i = m.end()
    return tokens


class FilterParser:
    OPS = {"eq", "ne", "gt", "ge", "lt", "le"}
    FUNCS = {"contains", "startswith", "endswith"}

    def __init__(self, text, tbl):
        self.text, self.tbl = text, tbl
        self.tokens = lex(text)
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None, len(self.text))

    def take(self, kind=None, value=None):
        tok = self.peek()
        if tok[0] is None or (kind and tok[0] != kind) or (value and tok[1] != value):
            raise FilterError(f"Syntax error at position {tok[2]} in '{self.text}'.")
        self.pos += 1
        return tok

    def parse(self):
        node = self.or_expr()
        if self.peek()[0] is not None:
            raise FilterError(f"Syntax error at position {self.peek()[2]} in '{self.text}'.")
        return node

    def or_expr(self):
        node = self.and_expr()
        while self.peek()[:2] == ("id", "or"):
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self):
        node = self.unary()
        while self.peek()[:2] == ("id", "and"):
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self):
        if self.peek()[:2] == ("id", "not"):
            self.take()
            return ("not", self.unary())
        return self.primary()

    def prop(self, name):
        readable = readable_properties(self.tbl)
        if name not in readable:
            raise ApiError(400, "0x0", f"Could not find a property named '{name}' on type "
                                       f"'Microsoft.Dynamics.CRM.{self.tbl.logical}'.")
        return name

    def literal(self):
        kind, value, at = self.take()
        if kind in ("str", "num", "guid", "date"):
            return value
        if kind == "id" and value in ("null", "true", "false"):
            return {"null": None, "true": True, "false": False}[value]
        raise FilterError(f"Syntax error at position {at} in '{self.text}'.")

    def primary(self):
        kind, value, at = self.peek()
        if kind == "(":
            self.take()
            node = self.or_expr()
            self.take(")")
            return node
        if kind != "id":
            raise FilterError(f"Syntax error at position {at} in '{self.text}'.")
        self.take()
        if self.peek()[0] == "(":
            if value not in self.FUNCS:
                raise ApiError(400, "0x0", f"An unknown function with name '{value}' was found. This may also be a "
                                           f"function import or a key lookup on a navigation property, which is not allowed.")
            self.take("(")
            name = self.prop(self.take("id")[1])
            self.take(",")
            lit = self.literal()
            self.take(")")
            return (value, name, lit)
        name = self.prop(value)
        op = self.take("id")[1]
        if op not in self.OPS:
            raise FilterError(f"Syntax error at position {at} in '{self.text}'.")
        return (op, name, self.literal())


def compare(op, a, b):
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.lower(), b.lower()
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if a is None or b is None:
        return False
    try:
        return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
    except TypeError:
        return False


def evaluate(node, row):
    op = node[0]
    if op == "or":
        return evaluate(node[1], row) or evaluate(node[2], row)
    if op == "and":
        return evaluate(node[1], row) and evaluate(node[2], row)
    if op == "not":
        return not evaluate(node[1], row)
    value = row.get(node[1])
    if op in FilterParser.FUNCS:
        if not isinstance(value, str) or not isinstance(node[2], str):
            return False
        v, lit = value.lower(), node[2].lower()
        return {"contains": lit in v, "startswith": v.startswith(lit), "endswith": v.endswith(lit)}[op]
    return compare(op, value, node[2])


def readable_properties(tbl):
    props = set()
    for name, col in tbl.columns.items():
        props.add(f"_{name}_value" if col.kind == "lookup" else name)
    return props


# ---------------------------------------------------------------------------------------------- state


class State:
    def __init__(self, clients):
        self.lock = threading.RLock()
        self.base_clients = clients
        self.bind_missing_status = 404
        self.reset()

    def reset(self):
        with self.lock:
            self.rows = {name: {} for name in TABLES}
            self.parties = []
            self.faults = []
            self.throttle = None
            self.requests = []
            self.in_flight = 0
            self.max_in_flight = 0
            self.latency = 0.0
            self.seq = 1000
            self.clock = 0
            self.maxuploadfilesize = 5242880
            self.privileges = {}
            self.users = {}
            for c in self.base_clients:
                self.add_app_user(c)
            now = self.now()
            self.insert("organizations", {"organizationid": ORG_ID, "name": "Mailroom Demo",
                                          "maxuploadfilesize": self.maxuploadfilesize, "createdon": now})
            self.insert("queues", {"queueid": SEED_IDS["support_queue"], "name": "Support", "statecode": 0})
            self.insert("queues", {"queueid": SEED_IDS["billing_queue"], "name": "Billing", "statecode": 0})
            self.insert("systemusers", {"systemuserid": SEED_IDS["ana"], "fullname": "Ana Agent",
                                        "internalemailaddress": "ana@example.com"})
            self.insert("teams", {"teamid": SEED_IDS["support_team"], "name": "Support Team"})

    def add_app_user(self, client):
        uid = gid("appuser:" + client["client_id"])
        self.users[client["client_id"]] = uid
        held = set(client.get("privileges") or ALL_PRIVILEGES) - set(client.get("revoke") or [])
        self.privileges[uid] = held
        self.rows["systemusers"][uid] = {"systemuserid": uid, "fullname": client.get("name", "# " + client["client_id"]),
                                         "applicationid": gid("app:" + client["client_id"]), "_version": 1}

    def now(self):
        # Strictly increasing, so createdon orders deterministically.
        self.clock += 1
        t = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(microseconds=self.clock)
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def insert(self, entity_set, record):
        record.setdefault("_version", 1)
        self.rows[entity_set][record[TABLES[entity_set].pk]] = record
        return record


# ---------------------------------------------------------------------------------------------- the service


def client_for_authority(c):
    return {k: v for k, v in c.items() if k in ("tenant", "client_id", "client_secret", "lifetime")}


class Emulator:
    """One Dataverse environment: its records, application users, privileges and test controls. Tokens come from
    the shared authority; a token of a client without an application user here is refused (401)."""

    def __init__(self, authority, clients):
        self.authority = authority
        for c in clients:
            authority.add_client(client_for_authority(c))
        self.state = State(clients)

    # -------------------------------------------------------------- helpers
    def check_privilege(self, caller, privilege, tbl):
        held = self.state.privileges.get(caller, set())
        if privilege not in held:
            raise ApiError(403, "0x80040220",
                           f"Principal user (Id={caller}, type=8, roleCount=1, privilegeCount={len(held)}, accessMode=4), "
                           f"is missing {privilege} privilege (Id={gid('privilege:' + privilege)}) on OTC={tbl.otc} for "
                           f"entity '{tbl.logical}'. context.Caller={caller}")

    def parse_bind(self, entity_set, nav, value, allowed):
        if not isinstance(value, str):
            raise payload_error(entity_set, "Microsoft.OData.ODataException: An annotation 'odata.bind' must have a "
                                            "string value.")
        m = re.fullmatch(r"(?:.*?/)?([A-Za-z_]+)\(([^)]*)\)", value.strip())
        if not m:
            raise payload_error(entity_set, f"Microsoft.OData.ODataException: The value '{value}' of the 'odata.bind' "
                                            f"annotation for navigation property '{nav}' is not a valid entity reference.")
        target, rid = m.group(1), m.group(2).strip().lower()
        if target not in TABLES:
            raise ApiError(404, "0x8006088a", f"Resource not found for the segment '{target}'.")
        if target not in allowed:
            raise payload_error(entity_set, f"Microsoft.OData.ODataException: The entity set '{target}' is not valid "
                                            f"for navigation property '{nav}'.")
        if not GUID_RE.fullmatch(rid):
            raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert the literal '{rid}' to the "
                                            f"expected type 'Edm.Guid'.")
        return target, rid

    def check_value(self, tbl, entity_set, name, col, value, creating):
        if col.read_only:
            return False  # ignored, as the service does for computed columns
        if creating and not col.create:
            raise ApiError(400, "0x80040203", f"Attribute '{name}' of entity '{tbl.logical}' is not valid for create. "
                                              f"Use the SetState message or an update to change it.")
        if not creating and not col.update:
            raise ApiError(400, "0x80040203", f"Attribute '{name}' of entity '{tbl.logical}' is not valid for update.")
        if value is None:
            return True
        if col.kind in ("picklist", "state", "status"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' "
                                                f"to the expected type 'Edm.Int32'. ---> System.FormatException: Input "
                                                f"string was not in a correct format.")
            if col.options is not None and value not in [v for v, _ in col.options]:
                accepted = ",".join(str(v) for v, _ in col.options)
                raise ApiError(400, "0x8004431A",
                               f"A validation error occurred. The value {value} of '{name}' on record of type "
                               f"'{tbl.logical}' is outside the valid range. Accepted Values: {accepted}.")
        elif col.kind in ("string", "memo"):
            if not isinstance(value, str):
                raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert a primitive value to "
                                                f"the expected type 'Edm.String'.")
            if col.max_len is not None and utf16_len(value) > col.max_len:
                raise ApiError(400, "0x80044331",
                               f"A validation error occurred.  The length of the '{name}' attribute of the "
                               f"'{tbl.logical}' entity exceeded the maximum allowed length of '{col.max_len}'.")
        elif col.kind == "bool":
            if not isinstance(value, bool):
                raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' "
                                                f"to the expected type 'Edm.Boolean'.")
        elif col.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' "
                                                f"to the expected type 'Edm.Int32'.")
        elif col.kind == "guid":
            if not isinstance(value, str) or not GUID_RE.fullmatch(value):
                raise payload_error(entity_set, f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' "
                                                f"to the expected type 'Edm.Guid'.")
        elif col.kind in ("lookup", "datetime"):
            raise payload_error(entity_set, f"Microsoft.Crm.CrmException: Invalid property '{name}' was found in "
                                            f"entity 'Microsoft.Dynamics.CRM.{tbl.logical}'.")
        return True

    def validate_body(self, tbl, entity_set, body, creating, deep=True):
        """Steps 4-6 of the checklist. Returns (values, binds, deep parties)."""
        if not isinstance(body, dict):
            raise payload_error(entity_set, "Microsoft.OData.ODataException: A resource was expected.")
        values, binds, parties = {}, {}, None
        # 4. keys: every key must be known before any value is looked at.
        for key in body:
            if key == "@odata.type" or key.startswith("@"):
                continue
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                if nav not in tbl.navs:
                    raise payload_error(entity_set, f"Microsoft.OData.ODataException: An undeclared property '{nav}' "
                                                    f"which only has property annotations in the payload but no "
                                                    f"property value was found in the payload. In OData, only declared "
                                                    f"navigation properties and declared named streams can be "
                                                    f"represented as properties without values.")
                continue
            if key == "email_activity_parties" and tbl.set == "emails" and deep:
                continue
            if key not in tbl.columns or tbl.columns[key].kind == "lookup" and key not in tbl.navs:
                raise payload_error(entity_set, f"Microsoft.Crm.CrmException: Invalid property '{key}' was found in "
                                                f"entity 'Microsoft.Dynamics.CRM.{tbl.logical}'. ---> "
                                                f"Microsoft.OData.ODataException: The property '{key}' does not exist on "
                                                f"type 'Microsoft.Dynamics.CRM.{tbl.logical}'. Make sure to only use "
                                                f"property names that are defined by the type.")
        # 5-6. values
        for key, value in body.items():
            if key.startswith("@"):
                continue
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                column, allowed = tbl.navs[nav]
                binds[column] = self.parse_bind(entity_set, nav, value, allowed)
                continue
            if key == "email_activity_parties":
                if not isinstance(value, list):
                    raise payload_error(entity_set, "Microsoft.OData.ODataException: A collection was expected for "
                                                    "'email_activity_parties'.")
                parties = [self.validate_body(ACTIVITYPARTY, "activityparties", p, True, deep=False) for p in value]
                continue
            if self.check_value(tbl, entity_set, key, tbl.columns[key], value, creating):
                values[key] = value
        return values, binds, parties

    def row_view(self, tbl, row, select=None):
        out = {"@odata.etag": f'W/"{row.get("_version", 1)}"'}
        for name, col in tbl.columns.items():
            key = f"_{name}_value" if col.kind == "lookup" else name
            if select and key not in select and name != tbl.pk:
                continue
            value = row.get(name)
            if col.kind == "lookup":
                out[key] = value[1] if value else None
            else:
                out[key] = value
        return out

    def flat(self, tbl, row):
        """Row values for $filter/$orderby, lookups as _x_value."""
        return {(f"_{n}_value" if c.kind == "lookup" else n): (row.get(n)[1] if c.kind == "lookup" and row.get(n)
                                                                else row.get(n))
                for n, c in tbl.columns.items()}

    def parse_select(self, tbl, query):
        raw = query.get("$select")
        if raw is None:
            return None
        select = [s.strip() for s in raw.split(",") if s.strip()]
        readable = readable_properties(tbl)
        for s in select:
            if s not in readable:
                raise ApiError(400, "0x0", f"Could not find a property named '{s}' on type "
                                           f"'Microsoft.Dynamics.CRM.{tbl.logical}'.")
        return set(select)

    # -------------------------------------------------------------- operations
    def create(self, caller, entity_set, body, query, prefer, base):
        tbl = TABLES[entity_set]
        values, binds, parties = self.validate_body(tbl, entity_set, body, creating=True)
        st = self.state
        with st.lock:
            # 7. the incident's customer
            if entity_set == "incidents":
                customer = [k for k in ("customerid_contact@odata.bind", "customerid_account@odata.bind") if k in body]
                if not customer:
                    raise ApiError(400, "0x80044410", "You should specify a parent contact or account.")
                if len(customer) > 1:
                    raise ApiError(400, "0x8004440f", "You can either specify a parent contact or account, but not both.")
            # binds must name existing rows
            for column, (target, rid) in binds.items():
                if rid not in st.rows[target]:
                    raise not_found_record(TABLES[target].logical, rid, st.bind_missing_status)
            for p_values, p_binds, _ in parties or []:
                for column, (target, rid) in p_binds.items():
                    if rid not in st.rows[target]:
                        raise not_found_record(TABLES[target].logical, rid, st.bind_missing_status)
            # 8. privileges: create, append (source) / append to (each target), assign (another owner)
            self.check_privilege(caller, f"prvCreate{tbl.privilege}", tbl)
            for column, (target, rid) in list(binds.items()) + [
                    (c, t) for pv, pb, _ in (parties or []) for c, t in pb.items() if t[0] != "systemusers"]:
                if column == "ownerid":
                    if rid != caller:
                        self.check_privilege(caller, f"prvAssign{tbl.privilege}", tbl)
                    continue
                self.check_privilege(caller, f"prvAppend{tbl.privilege}", tbl)
                target_tbl = TABLES[target]
                self.check_privilege(caller, f"prvAppendTo{target_tbl.privilege}", target_tbl)
            if entity_set == "queueitems":
                obj = binds.get("objectid")
                if obj and any(q.get("objectid") and q["objectid"][1] == obj[1] and q.get("statecode", 0) == 0
                               for q in st.rows["queueitems"].values()):
                    raise ApiError(400, "0x80040526", "An active queue item already exists for the given object. Cannot "
                                                      "create more than one active queue item for this object.")
            # 13. the upload limit, on the Base64 length
            if entity_set == "annotations" and values.get("documentbody") is not None:
                doc = values["documentbody"]
                if len(doc) > st.maxuploadfilesize:
                    raise ApiError(400, "0x80044a02", "Attachment file size is too big.")
                try:
                    raw = base64.b64decode(doc, validate=True)
                except Exception:
                    raise payload_error(entity_set, "System.FormatException: The input is not a valid Base-64 string.")
                values["isdocument"] = True
                values["filesize"] = len(raw)
            rid = (values.get(tbl.pk) or str(uuid.uuid4())).lower()
            if rid in st.rows[entity_set]:
                raise ApiError(412, "0x80040237", "Cannot insert duplicate key.")
            row = dict(values)
            row[tbl.pk] = rid
            for column, target in binds.items():
                row[column] = target
            now = st.now()
            row["createdon"] = now
            row["modifiedon"] = now
            row.setdefault("ownerid", ("systemusers", caller)) if "ownerid" in tbl.columns else None
            if "statecode" in tbl.columns:
                row.setdefault("statecode", 0)
                row.setdefault("statuscode", 1)
            if entity_set == "contacts":
                row["fullname"] = " ".join(x for x in (row.get("firstname"), row.get("lastname")) if x) or None
            if entity_set == "incidents":
                row.setdefault("prioritycode", 2)
                if not row.get("ticketnumber"):
                    suffix = "".join(random.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") if i % 2 == 0 else
                                     random.choice("0123456789") for i in range(6))
                    row["ticketnumber"] = f"CAS-{st.seq:05d}-{suffix}"
                    st.seq += 1
            if entity_set == "emails":
                row.setdefault("directioncode", True)
                for p_values, p_binds, _ in parties or []:
                    party = dict(p_values)
                    party["activitypartyid"] = str(uuid.uuid4())
                    party["activityid"] = rid
                    for column, target in p_binds.items():
                        party[column] = target
                    st.parties.append(party)
            if entity_set == "queueitems":
                row["enteredon"] = now
            st.insert(entity_set, row)
        if "return=representation" in (prefer or ""):
            select = self.parse_select(tbl, query)
            body = {"@odata.context": f"{base}{API}/$metadata#{entity_set}/$entity", **self.row_view(tbl, row, select)}
            return 201, body, {"Preference-Applied": "return=representation"}
        return 204, None, {"OData-EntityId": f"{base}{API}/{entity_set}({rid})"}

    def update(self, caller, entity_set, rid, body):
        tbl = TABLES[entity_set]
        values, binds, _ = self.validate_body(tbl, entity_set, body, creating=False)
        st = self.state
        with st.lock:
            row = st.rows[entity_set].get(rid)
            if row is None:
                raise ApiError(404, "0x80040217", f"{tbl.logical} With Id = {rid} Does Not Exist")
            for column, (target, trid) in binds.items():
                if trid not in st.rows[target]:
                    raise not_found_record(TABLES[target].logical, trid, st.bind_missing_status)
            self.check_privilege(caller, f"prvWrite{tbl.privilege}", tbl)
            row.update(values)
            for column, target in binds.items():
                row[column] = target
            row["_version"] = row.get("_version", 1) + 1
            row["modifiedon"] = st.now()
        return 204, None, {}

    def delete(self, caller, entity_set, rid):
        tbl = TABLES[entity_set]
        st = self.state
        with st.lock:
            if rid not in st.rows[entity_set]:
                raise ApiError(404, "0x80040217", f"{tbl.logical} With Id = {rid} Does Not Exist")
            self.check_privilege(caller, f"prvDelete{tbl.privilege}", tbl)
            del st.rows[entity_set][rid]
        return 204, None, {}

    def read_one(self, caller, entity_set, rid, query, base):
        tbl = TABLES[entity_set]
        select = self.parse_select(tbl, query)
        st = self.state
        with st.lock:
            row = st.rows[entity_set].get(rid)
            if row is None:
                raise ApiError(404, "0x80040217", f"{tbl.logical} With Id = {rid} Does Not Exist")
            self.check_privilege(caller, f"prvRead{tbl.privilege}", tbl)
            view = self.row_view(tbl, row, select)
        return 200, {"@odata.context": f"{base}{API}/$metadata#{entity_set}/$entity", **view}, {}

    def read_many(self, caller, entity_set, query, prefer, base, raw_query):
        tbl = TABLES[entity_set]
        for key in query:
            if key.startswith("$") and key not in ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken",
                                                   "$expand"):
                if key == "$skip":
                    raise ApiError(400, "0x0", "The query parameter $skip is not supported.")
                raise ApiError(400, "0x0", f"The query parameter {key} is not supported.")
        select = self.parse_select(tbl, query)
        node = None
        if "$filter" in query:
            try:
                node = FilterParser(query["$filter"], tbl).parse()
            except FilterError as e:
                raise ApiError(400, "0x0", str(e))
        order = []
        for part in [p.strip() for p in query.get("$orderby", "").split(",") if p.strip()]:
            bits = part.split()
            name = bits[0]
            if name not in readable_properties(tbl):
                raise ApiError(400, "0x0", f"Could not find a property named '{name}' on type "
                                           f"'Microsoft.Dynamics.CRM.{tbl.logical}'.")
            order.append((name, len(bits) > 1 and bits[1].lower() == "desc"))
        top = None
        if "$top" in query:
            try:
                top = int(query["$top"])
                assert top >= 0
            except (ValueError, AssertionError):
                raise ApiError(400, "0x0", f"Invalid value '{query['$top']}' for $top query option found.")
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer or "")
        page = min(int(m.group(1)), 5000) if m else 5000
        st = self.state
        with st.lock:
            self.check_privilege(caller, f"prvRead{tbl.privilege}", tbl)
            rows = [r for r in st.rows[entity_set].values() if node is None or evaluate(node, self.flat(tbl, r))]
            for name, desc in reversed(order):
                rows.sort(key=lambda r: (self.flat(tbl, r).get(name) is None, str(self.flat(tbl, r).get(name) or "")),
                          reverse=desc)
            if top is not None and not m:
                rows = rows[:top]
            total = len(rows)
            start = 0
            if "$skiptoken" in query:
                try:
                    start = int(base64.urlsafe_b64decode(query["$skiptoken"].encode()).decode().split(":")[1])
                except Exception:
                    raise ApiError(400, "0x0", "The $skiptoken is not valid.")
            chunk = rows[start:start + page]
            body = {"@odata.context": f"{base}{API}/$metadata#{entity_set}",
                    "value": [self.row_view(tbl, r, select) for r in chunk]}
        if query.get("$count") == "true":
            body["@odata.count"] = min(total, 5000)
        headers = {}
        if m:
            headers["Preference-Applied"] = f"odata.maxpagesize={page}"
            if start + page < total:
                token = base64.urlsafe_b64encode(f"page:{start + page}".encode()).decode()
                kept = [(k, v) for k, v in urllib.parse.parse_qsl(raw_query, keep_blank_values=True) if k != "$skiptoken"]
                kept.append(("$skiptoken", token))
                body["@odata.nextLink"] = f"{base}{API}/{entity_set}?{urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)}"
        return 200, body, headers

    def who_am_i(self, caller, base):
        return 200, {"@odata.context": f"{base}{API}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                     "BusinessUnitId": BU_ID, "UserId": caller, "OrganizationId": ORG_ID}, {}

    def user_privileges(self, caller, uid, base):
        st = self.state
        with st.lock:
            if uid not in st.rows["systemusers"]:
                raise ApiError(404, "0x80040217", f"systemuser With Id = {uid} Does Not Exist")
            if uid != caller:
                self.check_privilege(caller, "prvReadUser", TABLES["systemusers"])
            held = sorted(st.privileges.get(uid, set()))
        return 200, {"@odata.context": f"{base}{API}/$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
                     "RolePrivileges": [{"Depth": "Global", "PrivilegeId": gid("privilege:" + p),
                                         "BusinessUnitId": BU_ID, "PrivilegeName": p} for p in held]}, {}

    def add_to_queue(self, caller, queue_id, body, base):
        if not isinstance(body, dict) or not isinstance(body.get("Target"), dict):
            raise ApiError(400, "0x0", "Required parameter 'Target' is missing.")
        for key in body:
            if key not in ("Target", "SourceQueue", "QueueItemProperties"):
                raise ApiError(400, "0x0", f"The parameter '{key}' in the request payload is not a valid parameter for "
                                           f"the operation 'AddToQueue'.")
        target = body["Target"]
        odata_type = str(target.get("@odata.type", ""))
        logical = odata_type.replace("#", "").replace("Microsoft.Dynamics.CRM.", "")
        tbl = next((t for t in TABLES.values() if t.logical == logical), None)
        if tbl is None:
            raise ApiError(400, "0x0", f"The entity type '{odata_type}' of 'Target' is not valid.")
        for key in target:
            if not key.startswith("@") and key not in tbl.columns:
                raise ApiError(400, "0x0", f"The property '{key}' does not exist on type "
                                           f"'Microsoft.Dynamics.CRM.{tbl.logical}'. Make sure to only use property "
                                           f"names that are defined by the type.")
        object_id = str(target.get(tbl.pk, "")).lower()
        st = self.state
        with st.lock:
            if queue_id not in st.rows["queues"]:
                raise not_found_record("queue", queue_id, st.bind_missing_status)
            if object_id not in st.rows[tbl.set]:
                raise not_found_record(tbl.logical, object_id, st.bind_missing_status)
            self.check_privilege(caller, "prvAppendToQueue", TABLES["queues"])
            self.check_privilege(caller, "prvCreateQueueItem", TABLES["queueitems"])
            existing = next((q for q in st.rows["queueitems"].values()
                             if q.get("objectid") and q["objectid"][1] == object_id and q.get("statecode", 0) == 0),
                            None)
            if existing:  # moves the record to the destination queue
                existing["queueid"] = ("queues", queue_id)
                existing["enteredon"] = st.now()
                existing["_version"] = existing.get("_version", 1) + 1
                item_id = existing["queueitemid"]
            else:
                item_id = str(uuid.uuid4())
                now = st.now()
                st.insert("queueitems", {"queueitemid": item_id, "queueid": ("queues", queue_id),
                                         "objectid": (tbl.set, object_id), "statecode": 0, "statuscode": 1,
                                         "enteredon": now, "createdon": now, "ownerid": ("systemusers", caller)})
        return 200, {"@odata.context": f"{base}{API}/$metadata#Microsoft.Dynamics.CRM.AddToQueueResponse",
                     "QueueItemId": item_id}, {}

    def picklists(self, entity, attribute, query, base):
        tbl = next((t for t in TABLES.values() if t.logical == entity), None)
        if tbl is None:
            raise ApiError(404, "0x80040217", f"Could not find entity with name '{entity}'.")
        expand = query.get("$expand", "")
        attrs = [(n, c) for n, c in sorted(tbl.columns.items()) if c.kind == "picklist"]
        if attribute is not None:
            attrs = [(n, c) for n, c in attrs if n == attribute]
            if not attrs:
                raise ApiError(404, "0x80040217", f"Could not find attribute with name '{attribute}' of type "
                                                  f"PicklistAttributeMetadata on entity '{entity}'.")

        def label(text, lang):
            return {"Label": text, "LanguageCode": lang, "IsManaged": True, "MetadataId": gid("label:" + text + str(lang)),
                    "HasChanged": None}

        def meta(name, col):
            out = {"LogicalName": name, "MetadataId": gid(f"attribute:{entity}.{name}")}
            if "OptionSet" in expand:
                out["OptionSet"] = {"MetadataId": gid(f"optionset:{entity}.{name}"), "Options": [
                    {"Value": v, "Label": {"LocalizedLabels": [label(t, lang) for lang, t in sorted(labels.items())],
                                           "UserLocalizedLabel": label(labels.get(1033, next(iter(labels.values()))),
                                                                       1033)}}
                    for v, labels in col.options]}
            return out

        context = f"{base}{API}/$metadata#EntityDefinitions('{entity}')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
        if attribute is not None:
            return 200, {"@odata.context": context + "/$entity", **meta(*attrs[0])}, {}
        return 200, {"@odata.context": context, "value": [meta(n, c) for n, c in attrs]}, {}

    # -------------------------------------------------------------- controls
    def control(self, action, body):
        st = self.state
        with st.lock:
            if action == "reset":
                st.reset()
                return 200, {"ok": True}
            if action == "fail":
                fault = {"status": int(body.get("status", 503)), "count": int(body.get("count", 1)),
                         "method": body.get("method"), "path": body.get("path"),
                         "retry_after": body.get("retry_after", 1), "code": body.get("code"),
                         "privilege": body.get("privilege", "prvCreateIncident")}
                st.faults.append(fault)
                return 200, {"ok": True, "pending": len(st.faults)}
            if action == "throttle":
                st.throttle = body if body.get("enabled", True) else None
                return 200, {"ok": True}
            if action == "privileges":
                uid = st.users.get(body.get("client_id", ""))
                if uid is None:
                    return 404, {"error": "unknown client"}
                if "set" in body:
                    st.privileges[uid] = set(body["set"])
                st.privileges[uid] -= set(body.get("revoke", []))
                st.privileges[uid] |= set(body.get("grant", []))
                return 200, {"ok": True, "privileges": sorted(st.privileges[uid])}
            if action == "settings":
                if "maxuploadfilesize" in body:
                    st.maxuploadfilesize = int(body["maxuploadfilesize"])
                    st.rows["organizations"][ORG_ID]["maxuploadfilesize"] = st.maxuploadfilesize
                if "bind_missing_status" in body:
                    st.bind_missing_status = int(body["bind_missing_status"])
                if "latency_ms" in body:
                    st.latency = float(body["latency_ms"]) / 1000
                return 200, {"ok": True}
            if action == "seed":
                entity_set = body["set"]
                tbl = TABLES[entity_set]
                record = dict(body["record"])
                record.setdefault(tbl.pk, str(uuid.uuid4()))
                record[tbl.pk] = record[tbl.pk].lower()
                record.setdefault("createdon", st.now())
                if "statecode" in tbl.columns:
                    record.setdefault("statecode", 0)
                    record.setdefault("statuscode", 1)
                if entity_set == "contacts":
                    record["fullname"] = " ".join(x for x in (record.get("firstname"), record.get("lastname")) if x)
                for key, value in list(record.items()):
                    if isinstance(value, list) and len(value) == 2:
                        record[key] = tuple(value)
                st.insert(entity_set, record)
                return 200, {"id": record[tbl.pk]}
            if action == "add-client":
                self.authority.add_client(client_for_authority(body))
                st.base_clients.append(body)
                st.add_app_user(body)
                return 200, {"ok": True, "user_id": st.users[body["client_id"]]}
        return 404, {"error": f"unknown control {action}"}

    def snapshot(self):
        st = self.state
        with st.lock:
            def plain(row):
                return {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}
            return {
                "tables": {name: [plain(r) for r in rows.values()] for name, rows in st.rows.items()},
                "activityparties": [plain(p) for p in st.parties],
                "users": dict(st.users),
                "seed": dict(SEED_IDS),
            }

    def take_fault(self, method, path):
        st = self.state
        with st.lock:
            if st.throttle:
                return {"status": 429, "retry_after": st.throttle.get("retry_after", 1),
                        "code": st.throttle.get("code")}
            for fault in st.faults:
                if fault["method"] and fault["method"] != method:
                    continue
                if fault["path"] and fault["path"] not in path:
                    continue
                fault["count"] -= 1
                if fault["count"] <= 0:
                    st.faults.remove(fault)
                return fault
        return None


THROTTLE_MESSAGES = {
    "0x80072322": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    "0x80072321": "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over time "
                  "window of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests "
                  "and try again later.",
    "0x80072326": "Number of concurrent requests exceeded the limit of 52.",
}


def fault_error(fault, caller):
    status = fault["status"]
    if status == 429:
        code = fault.get("code") or "0x80072322"
        return ApiError(429, code, THROTTLE_MESSAGES.get(code, THROTTLE_MESSAGES["0x80072322"]),
                        {"Retry-After": str(fault.get("retry_after", 1))})
    if status == 403:
        p = fault.get("privilege") or "prvCreateIncident"
        return ApiError(403, "0x80040220", f"Principal user (Id={caller}, type=8, roleCount=1, privilegeCount=1, "
                                           f"accessMode=4), is missing {p} privilege (Id={gid('privilege:' + p)}).")
    headers = {"Retry-After": str(fault["retry_after"])} if status == 503 and fault.get("retry_after") else {}
    return ApiError(status, fault.get("code") or "0x80040216", "An unexpected error occurred.", headers)


# ---------------------------------------------------------------------------------------------- HTTP


class Server:
    """The root environment (for demos) and the isolated ones tests create, behind one token authority."""

    def __init__(self, clients):
        self.authority = identity.Authority()
        self.root = Emulator(self.authority, clients)
        self.envs: dict[str, Emulator] = {}
        self.lock = threading.Lock()

    def new_environment(self, base):
        env_id = uuid.uuid4().hex[:12]
        clients = [
            {"tenant": TENANT, "client_id": f"{env_id}-handoff", "client_secret": f"{env_id}-handoff-secret",
             "name": "# Mailroom Handoff", "revoke": []},
            {"tenant": TENANT, "client_id": f"{env_id}-limited", "client_secret": f"{env_id}-limited-secret",
             "name": "# Mailroom Limited", "revoke": ["prvCreateIncident"]},
        ]
        emu = Emulator(self.authority, clients)
        with self.lock:
            self.envs[env_id] = emu
        return {"id": env_id, "url": f"{base}/env/{env_id}", "authority": base, "tenant": TENANT,
                "clients": [{k: c[k] for k in ("client_id", "client_secret", "revoke")} for c in clients],
                "users": dict(emu.state.users), "seed": dict(SEED_IDS)}


def make_handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        emu: Emulator = server.root
        prefix = ""

        def log_message(self, *args):
            pass

        def send_json(self, status, body, headers=None):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("OData-Version", "4.0")
            if body is not None:
                self.send_header("Content-Type", "application/json; odata.metadata=minimal")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if status != 204:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if status != 204:
                self.wfile.write(data)

        def body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def host(self):
            return f"http://{self.headers.get('Host') or '127.0.0.1'}"

        def base(self):
            return self.host() + self.prefix

        def do_GET(self):
            self.dispatch("GET")

        def do_POST(self):
            self.dispatch("POST")

        def do_PATCH(self):
            self.dispatch("PATCH")

        def do_DELETE(self):
            self.dispatch("DELETE")

        def dispatch(self, method):
            # One handler serves every request of a keep-alive connection: start from the root each time.
            self.emu, self.prefix = server.root, ""
            raw = self.body()
            split = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(split.path)
            if path == "/health":
                return self.send_json(200, {"ok": True})
            if method == "POST" and path == "/_emulator/dataverse/environments":
                return self.send_json(200, server.new_environment(self.host()))
            m = re.match(r"/env/([0-9a-f]+)(/.*)?$", path)
            if m:
                with server.lock:
                    emu = server.envs.get(m.group(1))
                if emu is None:
                    return self.send_json(404, {"error": f"no environment {m.group(1)}"})
                self.emu, self.prefix, path = emu, f"/env/{m.group(1)}", m.group(2) or "/"
            emu = self.emu
            if path.startswith("/_emulator/dataverse/"):
                action = path[len("/_emulator/dataverse/"):]
                if method == "GET" and action == "state":
                    return self.send_json(200, emu.snapshot())
                if method == "GET" and action == "requests":
                    with emu.state.lock:
                        return self.send_json(200, {"requests": list(emu.state.requests),
                                                    "max_in_flight": emu.state.max_in_flight})
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self.send_json(400, {"error": "control bodies are JSON"})
                return self.send_json(*emu.control(action, body))
            if not path.startswith(API + "/") and path != API:
                answer = server.authority.handle(method, self.path, raw, self.headers.get("Content-Type", ""))
                if answer is None:
                    return self.send_json(404, {"error": "not_found"})
                return self.send_json(*answer)
            self.api(method, path[len(API):].lstrip("/"), split.query, raw)

        def api(self, method, rest, raw_query, raw):
            st = self.emu.state
            with st.lock:
                st.in_flight += 1
                st.max_in_flight = max(st.max_in_flight, st.in_flight)
                entry = {"method": method, "path": rest, "query": urllib.parse.unquote(raw_query),
                         "headers": {h: self.headers.get(h) for h in (
                             "Accept", "OData-Version", "OData-MaxVersion", "Content-Type", "Prefer", "If-None-Match")},
                         "authorized": bool(self.headers.get("Authorization"))}
                st.requests.append(entry)
            status = 500
            try:
                if st.latency:
                    time.sleep(st.latency)
                status, body, headers = self.api_inner(method, rest, raw_query, raw)
                self.send_json(status, body, headers)
            except ApiError as e:
                status = e.status
                err = {"code": e.code, "message": e.message}
                prefer = self.headers.get("Prefer") or ""
                if "include-annotations" in prefer and ("*" in prefer or "HelpLink" in prefer):
                    err["@Microsoft.PowerApps.CDS.HelpLink"] = HELP_LINK.format(code=e.code)
                self.send_json(e.status, {"error": err}, e.headers)
            finally:
                with st.lock:
                    st.in_flight -= 1
                    entry["status"] = status

        def api_inner(self, method, rest, raw_query, raw):
            query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
            prefer = self.headers.get("Prefer")
            base = self.base()
            segments = rest.split("/") if rest else [""]
            first = segments[0]
            m = re.fullmatch(r"([A-Za-z_]+)(?:\((.*)\))?", first)
            name = m.group(1) if m else first
            known = set(TABLES) | {"WhoAmI", "EntityDefinitions", "$metadata"}
            # 1. the entity set or function
            if name not in known or name == "activityparties":
                raise ApiError(404, "0x8006088a", f"Resource not found for the segment '{name}'.")
            # 2. the token
            auth = self.headers.get("Authorization") or ""
            claims = self.emu.authority.validate(auth[7:]) if auth.startswith("Bearer ") else None
            caller = self.emu.state.users.get(claims["client_id"]) if claims else None
            if caller is None:
                raise ApiError(401, "0x8005F101", "The requested resource requires authentication.", {
                    "WWW-Authenticate": f"Bearer authorization_uri={self.host()}/{TENANT}/oauth2/authorize, "
                                        f"resource_id={base}/"})
            # 9. service protection and injected faults, before the request runs
            fault = self.emu.take_fault(method, rest)
            if fault:
                raise fault_error(fault, caller)
            # 3. JSON bodies only
            body = None
            if method in ("POST", "PATCH"):
                ctype = (self.headers.get("Content-Type") or "").lower()
                if not ctype.startswith("application/json"):
                    raise ApiError(415, "0x0", "The request contains an entity body but no Content-Type header, or a "
                                               "Content-Type other than application/json.")
                try:
                    body = json.loads(raw or b"null")
                except ValueError as e:
                    raise payload_error(name, f"Microsoft.OData.ODataException: Invalid JSON. {e}")

            def no_route():
                return ApiError(404, "", f"No HTTP resource was found that matches the request URI "
                                         f"'{base}{API}/{rest}'.")

            if name == "WhoAmI":
                if method != "GET" or len(segments) > 1:
                    raise no_route()
                return self.emu.who_am_i(caller, base)
            if name == "EntityDefinitions":
                em = re.fullmatch(r"LogicalName='([^']*)'", (m.group(2) or "").strip())
                if method != "GET" or not em or len(segments) < 3 or segments[-1] != "Microsoft.Dynamics.CRM.PicklistAttributeMetadata":
                    raise no_route()
                am = re.fullmatch(r"Attributes(?:\(LogicalName='([^']*)'\))?", segments[1])
                if not am or len(segments) != 3:
                    raise no_route()
                return self.emu.picklists(em.group(1), am.group(1), query, base)
            key = (m.group(2) or "").strip().lower() if m else ""
            if key and not GUID_RE.fullmatch(key):
                raise ApiError(400, "0x0", f"Unrecognized 'Edm.Guid' literal '{key}' at '0' in '{key}'.")
            if len(segments) == 2:
                action = segments[1]
                if name == "systemusers" and key and action == "Microsoft.Dynamics.CRM.RetrieveUserPrivileges()":
                    if method != "GET":
                        raise no_route()
                    return self.emu.user_privileges(caller, key, base)
                if name == "queues" and key and action == "Microsoft.Dynamics.CRM.AddToQueue":
                    if method != "POST":
                        raise no_route()
                    return self.emu.add_to_queue(caller, key, body, base)
                raise no_route()
            if len(segments) > 2:
                raise no_route()
            if not key:
                if method == "GET":
                    return self.emu.read_many(caller, name, query, prefer, base, raw_query)
                if method == "POST":
                    return self.emu.create(caller, name, body, query, prefer, base)
                raise ApiError(405, "0x0", f"The HTTP method '{method}' is not allowed on '{name}'.")
            if method == "GET":
                return self.emu.read_one(caller, name, key, query, base)
            if method == "PATCH":
                return self.emu.update(caller, name, key, body)
            if method == "DELETE":
                return self.emu.delete(caller, name, key)
            raise ApiError(405, "0x0", f"The HTTP method '{method}' is not allowed on '{name}({key})'.")

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=45690)
    ap.add_argument("--clients", help="JSON file with extra clients: [{tenant, client_id, client_secret, revoke: [..]}]")
    args = ap.parse_args()
    clients = [dict(c) for c in DEFAULT_CLIENTS]
    if args.clients:
        clients += json.load(open(args.clients))
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Server(clients)))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    print(f"Dataverse emulator on {url}  (Web API {url}{API}, token endpoint {url}/{TENANT}/oauth2/v2.0/token)")
    print(f"  tenant {TENANT}; client mailroom-handoff / secret mailroom-handoff-secret")
    print(f"  queues: Support {SEED_IDS['support_queue']}, Billing {SEED_IDS['billing_queue']}; "
          f"user Ana Agent {SEED_IDS['ana']}; team Support Team {SEED_IDS['support_team']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
