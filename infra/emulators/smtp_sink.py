"""An SMTP sink for Mailroom's outbound tests (aiosmtpd, loopback only).

Two listeners:
  * STARTTLS port: plain greeting, STARTTLS required before AUTH and MAIL;
  * implicit-TLS port: TLS from the first byte.
Both require AUTH (PLAIN or LOGIN) with one of the test accounts, and save every accepted
message as <maildir>/<n>.eml beside <n>.json (envelope, authenticated login, port, TLS).

Recipients whose local part starts with "reject" are answered 550; with "defer", 451; everyone
else is accepted.

    python smtp_sink.py --starttls-port 45701 --tls-port 45702 --cert server.crt --key server.key \
                        --maildir DIR --accounts 'login:password,login2:password2'
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

COUNTER = itertools.count(1)


class Sink:
    def __init__(self, maildir, label):
        self.maildir = maildir
        self.label = label

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        if local.startswith("defer"):
            return f"451 4.3.0 <{address}>: Temporary lookup failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        n = next(COUNTER)
        name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{n:06d}"
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode("utf-8", "replace")
        tls = bool(session.ssl) or self.label == "tls"
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "auth_login": login,
            "listener": self.label,
            "tls": tls,
            "size": len(envelope.original_content or b""),
        }
        tmp = os.path.join(self.maildir, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.replace(tmp, os.path.join(self.maildir, f"{name}.eml"))
        # The envelope file appears last: a reader that sees it can read the message.
        tmp = os.path.join(self.maildir, f".{name}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(self.maildir, f"{name}.json"))
        return f"250 2.0.0 Ok: queued as {name}"


def authenticator(accounts):
    def check(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        # handled=False: aiosmtpd itself answers 235, or 535 on a wrong password.
        return AuthResult(success=accounts.get(login) == password, handled=False, auth_data=auth_data)

    return check


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--starttls-port", type=int, required=True)
    p.add_argument("--tls-port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--maildir", required=True)
    p.add_argument("--accounts", required=True, help="login:password,login:password")
    args = p.parse_args()

    accounts = dict(pair.split(":", 1) for pair in args.accounts.split(",") if pair)
    os.makedirs(args.maildir, exist_ok=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)

    common = dict(
        hostname=args.host,
        authenticator=authenticator(accounts),
        auth_required=True,
        auth_require_tls=True,
        server_hostname="localhost",
        ident="Mailroom test sink",
    )
    starttls = Controller(
        Sink(args.maildir, "starttls"),
        port=args.starttls_port,
        tls_context=context,
        require_starttls=True,
        **common,
    )
    # On the implicit-TLS listener aiosmtpd leaves session.ssl empty and would hide AUTH as if the
    # session were plain: the listener itself guarantees TLS, so the check is off there.
    implicit_opts = dict(common, auth_require_tls=False)
    implicit = Controller(Sink(args.maildir, "tls"), port=args.tls_port, ssl_context=context, **implicit_opts)
    starttls.start()
    implicit.start()
    print(f"smtp sink: starttls {args.starttls_port}, tls {args.tls_port}, maildir {args.maildir}", flush=True)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    implicit.stop()
    starttls.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
