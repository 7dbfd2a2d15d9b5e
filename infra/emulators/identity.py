"""A local Microsoft-identity-shaped token authority, for tests and demos.

Serves what Mailroom's clients call:
  POST /{tenant}/oauth2/v2.0/token     grant_type=client_credentials (also authorization_code and
                                        refresh_token for delegated sign-in)
  GET  /{tenant}/oauth2/v2.0/authorize  the authorization-code flow's sign-in: redirects to redirect_uri with
                                        ?code=&state= (or ?error=&error_description=&state=); the user is the
                                        login_hint (a form asks for it when there is none); PKCE (S256, plain)
  POST /introspect                      RFC 7662, for dovecot's oauth2 passdb (XOAUTH2 / OAUTHBEARER)
and test controls under /_emulator/ (add a client, revoke its tokens or one user's, make the next token
short-lived).

Errors are shaped like Microsoft's (`{"error": ..., "error_description": "AADSTS...: ..."}`).
Other emulators import `Authority` and route token requests to it, so one process can stand in for
both the identity platform and the service behind it.

Run alone:  python3 infra/emulators/identity.py --port 45680 [--clients clients.json]
clients.json: [{"tenant": "t1", "client_id": "c1", "client_secret": "s1", "mailbox": "m@example.com",
                "lifetime": 3600, "roles": ["..."]}]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
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
        # Who may sign in at /authorize: (tenant, login_hint) -> (user, None) or (None, (error, description)).
        # Another emulator (graph.py) sets it to its own directory; by default any login_hint signs in.
        self.resolve_user = lambda tenant, login: (login, None)
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
                if code is None or code.get("exp", float("inf")) < time.time():
                    return 400, _error("invalid_grant", "AADSTS70008: The provided authorization code has expired.")
                problem = _check_code(code, client, form)
                if problem:
                    return 400, problem
                user = code["user"]
            elif grant == "refresh_token":
                rt = self.refresh_tokens.get(form.get("refresh_token", ""))
                if rt is None or rt.get("revoked") or rt["client_id"] != client["client_id"]:
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
                "scope": form.get("scope", ""),
            }
            body = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
            if grant in ("authorization_code", "refresh_token"):
                refresh = secrets.token_urlsafe(32)
                self.refresh_tokens[refresh] = {"user": user, "client_id": client["client_id"]}
                body["refresh_token"] = refresh
            return 200, body

    def issue_code(self, user: str, **details) -> str:
        """A one-time code for `user`. `details` may bind it to a client_id, redirect_uri and PKCE
        code_challenge (+ code_challenge_method), which the token endpoint then checks."""
        code = secrets.token_urlsafe(16)
        with self._lock:
            self.codes[code] = {"user": user, "exp": time.time() + 600, **details}
        return code

    # ------------------------------------------------------------------ authorization endpoint
    def authorize(self, tenant: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """GET /{tenant}/oauth2/v2.0/authorize: (status, headers, HTML body). Errors Microsoft shows on its own
        page (unknown client, unregistered redirect URI) are a 400 page; the others go back to redirect_uri."""
        with self._lock:
            client = self.clients.get((tenant, query.get("client_id", "")))
        redirect = query.get("redirect_uri", "")
        if client is None:
            return _page(400, f"AADSTS700016: Application with identifier '{query.get('client_id', '')}' was not found "
                              f"in the directory '{tenant}'.")
        allowed = client.get("redirect_uris")
        if not redirect or (allowed is not None and redirect not in allowed):
            return _page(400, "AADSTS50011: The redirect URI specified in the request does not match the redirect "
                              "URIs configured for the application.")
        state = query.get("state")

        def back(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in redirect else "?"
            return 302, {"Location": redirect + sep + urllib.parse.urlencode(params)}, b""

        if query.get("response_type") != "code":
            return back({"error": "unsupported_response_type",
                         "error_description": "AADSTS700054: response_type 'code' is required."})
        method = query.get("code_challenge_method", "plain" if query.get("code_challenge") else "")
        if method not in ("", "plain", "S256"):
            return back({"error": "invalid_request",
                         "error_description": "AADSTS501491: Invalid size of Code_Challenge parameter."})
        login = query.get("login_hint", "").strip()
        if not login:
            return _login_form(tenant, query)
        user, refusal = self.resolve_user(tenant, login)
        if refusal is not None:
            error, description = refusal
            return back({"error": error, "error_description": description})
        details = {"client_id": client["client_id"], "redirect_uri": redirect, "scope": query.get("scope", "")}
        if query.get("code_challenge"):
            details["code_challenge"] = query["code_challenge"]
            details["code_challenge_method"] = method
        return back({"code": self.issue_code(user, **details)})

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
                # All tokens of a client, or with "user" only that user's (e.g. after a password reset).
                def hit(t: dict) -> bool:
                    return t["client_id"] == body.get("client_id") and body.get("user") in (None, t["user"])

                for t in self.tokens.values():
                    if hit(t):
                        t["revoked"] = True
                for r in self.refresh_tokens.values():
                    if hit(r):
                        r["revoked"] = True
                return 200, {"ok": True}
            if action == "next-lifetime":
                self.clients[(body["tenant"], body["client_id"])]["next_lifetime"] = int(body["seconds"])
                return 200, {"ok": True}
            if action == "disable":
                self.clients[(body["tenant"], body["client_id"])]["disabled"] = bool(body.get("disabled", True))
                return 200, {"ok": True}
            if action == "stats":
                grants: dict[str, int] = {}
                for t in self.tokens.values():
                    if body.get("client_id") in (None, t["client_id"]):
                        grants[t["grant"]] = grants.get(t["grant"], 0) + 1
                return 200, {"token_requests": self.requests, "tokens": len(self.tokens), "grants": grants}
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

    def handle_authorize(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """Answers GET /{tenant}/oauth2/v2.0/authorize (a redirect or an HTML page); None for other paths."""
        parsed = urllib.parse.urlparse(path)
        parts = [p for p in parsed.path.split("/") if p]
        if method == "GET" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "authorize"]:
            query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
            return self.authorize(parts[0], query)
        return None


def _check_code(code: dict, client: dict, form: dict[str, str]) -> dict | None:
    """The authorization_code grant's checks for what the code was bound to at /authorize."""
    if code.get("client_id") not in (None, client["client_id"]):
        return _error("invalid_grant", "AADSTS70000: The provided authorization code was issued to another client.")
    if code.get("redirect_uri") not in (None, form.get("redirect_uri")):
        return _error("invalid_grant", "AADSTS50011: The redirect URI specified in the request does not match the "
                                       "redirect URI of the authorization request.")
    challenge = code.get("code_challenge")
    if challenge is not None:
        verifier = form.get("code_verifier", "")
        if code.get("code_challenge_method") == "S256":
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        else:
            computed = verifier
        if not verifier or not secrets.compare_digest(computed, challenge):
            return _error("invalid_grant", "AADSTS501481: The Code_Verifier does not match the code_challenge "
                                           "supplied in the authorization request.")
    return None


def _page(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    text = f"<!doctype html><title>Sign in</title><p>{html.escape(message)}</p>"
    return status, {"Content-Type": "text/html; charset=utf-8"}, text.encode()


def _login_form(tenant: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """No login_hint: ask for the account (the emulator's stand-in for Microsoft's sign-in page)."""
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in query.items() if k != "login_hint")
    text = (f"<!doctype html><title>Sign in</title><form method=get action=/{html.escape(tenant)}/oauth2/v2.0/authorize>"
            f"{hidden}<label>Account <input name=login_hint autofocus></label> <button>Sign in</button></form>")
    return 200, {"Content-Type": "text/html; charset=utf-8"}, text.encode()


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
                return
            answer = authority.handle_authorize("GET", self.path)
            if answer is None:
                json_response(self, 404, {"error": "not_found"})
                return
            status, headers, data = answer
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
