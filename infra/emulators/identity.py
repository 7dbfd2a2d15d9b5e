"""A local Microsoft-identity-shaped token authority, for tests and demos.

Serves what Mailroom's clients call:
  POST /{tenant}/oauth2/v2.0/token     grant_type=client_credentials (also authorization_code and
                                        refresh_token for delegated sign-in)
  POST /introspect                      RFC 7662, for dovecot's oauth2 passdb (XOAUTH2 / OAUTHBEARER)
and test controls under /_emulator/ (add a client, revoke its tokens, make the next token short-lived).

Errors are shaped like Microsoft's (`{"error": ..., "error_description": "AADSTS...: ..."}`).
Other emulators import `Authority` and route token requests to it, so one process can stand in for
both the identity platform and the service behind it.

Run alone:  python3 infra/emulators/identity.py --port 45680 [--clients clients.json]
clients.json: [{"tenant": "t1", "client_id": "c1", "client_secret": "s1", "mailbox": "m@example.com",
                "lifetime": 3600, "roles": ["..."]}]
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Authority:
    def __init__(self, clients: list[dict] | None = None):
        self._lock = threading.Lock()
        self.clients: dict[tuple[str, str], dict] = {}
        self.tokens: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.codes: dict[str, dict] = {}
        self.requests = 0
        for c in clients or []:
            self.add_client(c)

    def add_client(self, c: dict) -> None:
        with self._lock:
            self.clients[(c["tenant"], c["client_id"])] = dict(c)

    # ------------------------------------------------------------------ token endpoint
    def token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict]:
        with self._lock:
            self.requests += 1
            if not any(t == tenant for t, _ in self.clients):
                return 400, _error("invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
            client = self.clients.get((tenant, form.get("client_id", "")))
            if client is None:
                return 400, _error(
                    "unauthorized_client",
                    f"AADSTS700016: Application with identifier '{form.get('client_id', '')}' was not found in the directory.",
                )
            if client.get("disabled"):
                return 401, _error("invalid_client", "AADSTS7000222: The provided client secret keys are expired.")
            if not secrets.compare_digest(form.get("client_secret", ""), client["client_secret"]):
                return 401, _error("invalid_client", "AADSTS7000215: Invalid client secret provided.")
            grant = form.get("grant_type")
            user = client.get("mailbox")
            if grant == "client_credentials":
                if not form.get("scope", "").endswith("/.default"):
                    return 400, _error("invalid_scope", "AADSTS1002012: The provided value for scope is not valid.")
            elif grant == "authorization_code":
                code = self.codes.pop(form.get("code", ""), None)
                if code is None:
                    return 400, _error("invalid_grant", "AADSTS70008: The provided authorization code has expired.")
                user = code["user"]
            elif grant == "refresh_token":
                rt = self.refresh_tokens.get(form.get("refresh_token", ""))
                if rt is None or rt.get("revoked"):
                    return 400, _error("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.")
                user = rt["user"]
            else:
                return 400, _error("unsupported_grant_type", f"AADSTS70003: grant_type '{grant}' is not supported.")
            lifetime = int(client.pop("next_lifetime", client.get("lifetime", 3600)))
            token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0." + secrets.token_urlsafe(32)
            self.tokens[token] = {
                "tenant": tenant,
                "client_id": client["client_id"],
                "user": user,
                "roles": client.get("roles", []),
                "exp": time.time() + lifetime,
                "grant": grant,
            }
            body = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
            if grant in ("authorization_code", "refresh_token"):
                refresh = secrets.token_urlsafe(32)
                self.refresh_tokens[refresh] = {"user": user, "client_id": client["client_id"]}
                body["refresh_token"] = refresh
            return 200, body

    def issue_code(self, user: str) -> str:
        code = secrets.token_urlsafe(16)
        with self._lock:
            self.codes[code] = {"user": user}
        return code

    # ------------------------------------------------------------------ validation
    def validate(self, token: str) -> dict | None:
        """The token's claims if it is known, not revoked and not expired."""
        with self._lock:
            info = self.tokens.get(token)
            if info is None or info.get("revoked") or info["exp"] < time.time():
                return None
            return dict(info)

    def introspect(self, form: dict[str, str]) -> tuple[int, dict]:
        info = self.validate(form.get("token", ""))
        if info is None:
            return 200, {"active": False}
        return 200, {
            "active": True,
            "username": info["user"],
            "client_id": info["client_id"],
            "exp": int(info["exp"]),
            "scope": "IMAP.AccessAsApp POP.AccessAsApp",
        }

    # ------------------------------------------------------------------ test controls
    def control(self, action: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            if action == "clients":
                self.clients[(body["tenant"], body["client_id"])] = dict(body)
                return 200, {"ok": True}
            if action == "revoke":
                for t in self.tokens.values():
                    if t["client_id"] == body.get("client_id"):
                        t["revoked"] = True
                for r in self.refresh_tokens.values():
                    if r["client_id"] == body.get("client_id"):
                        r["revoked"] = True
                return 200, {"ok": True}
            if action == "next-lifetime":
                self.clients[(body["tenant"], body["client_id"])]["next_lifetime"] = int(body["seconds"])
                return 200, {"ok": True}
            if action == "disable":
                self.clients[(body["tenant"], body["client_id"])]["disabled"] = bool(body.get("disabled", True))
                return 200, {"ok": True}
            if action == "stats":
                return 200, {"token_requests": self.requests, "tokens": len(self.tokens)}
        return 404, {"error": f"unknown control {action}"}

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, dict] | None:
        """Answers identity requests; returns None for paths that are not ours."""
        parsed = urllib.parse.urlparse(path)
        parts = [p for p in parsed.path.split("/") if p]
        if method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self.token(parts[0], _form(body))
        if method == "POST" and parts == ["introspect"]:
            return self.introspect(_form(body))
        if method == "POST" and len(parts) == 2 and parts[0] == "_emulator":
            return self.control(parts[1], json.loads(body or b"{}"))
        return None


def _form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}


def _error(code: str, description: str) -> dict:
    return {
        "error": code,
        "error_description": f"{description} Trace ID: {secrets.token_hex(8)} Timestamp: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}",
        "error_codes": [int(description.split(":")[0][6:] or 0)],
    }


def json_response(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def make_handler(authority: Authority):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: tests read results, not logs
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            answer = authority.handle("POST", self.path, body, self.headers.get("Content-Type", ""))
            if answer is None:
                json_response(self, 404, {"error": "not_found"})
            else:
                json_response(self, *answer)

        def do_GET(self):
            if self.path == "/health":
                json_response(self, 200, {"ok": True})
            else:
                json_response(self, 404, {"error": "not_found"})

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=45680)
    ap.add_argument("--clients", help="JSON file with the clients to accept")
    args = ap.parse_args()
    clients = json.load(open(args.clients)) if args.clients else []
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Authority(clients)))
    host, port = server.server_address[:2]
    print(f"identity authority on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
