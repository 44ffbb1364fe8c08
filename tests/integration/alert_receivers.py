"""Real alert receivers on loopback for the alert tests: an HTTP webhook and an SMTP server.

- `WebhookReceiver`: http.server in a thread; keeps each POST's headers and exact body
  bytes (so the HMAC is checked over what really arrived) and answers `status`.
- `SmtpServer`: aiosmtpd, STARTTLS required (a certificate from a local CA made with
  ops/tls.py, for 127.0.0.1) and a login; keeps each message with whether it came over
  TLS and after a login.
- `TcpRelay`: a TCP forwarder that can be cut and restored, to take PostgreSQL away
  from one client (the alerter) without stopping the session's server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ops import tls
from testkit.harness.ports import free_port


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, status: int = 200):
        self.status = status
        self.posts: list[Post] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append(Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def messages(self, kind: str | None = None) -> list[tuple[str, str]]:
        """(message, incident key) of each post, optionally of one incident kind."""
        return [(p.json["message"], p.json["incident"]["key"]) for p in self.posts
                if kind is None or p.json["incident"]["kind"] == kind]


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    authenticated: bool

    @property
    def message(self) -> Message:
        return message_from_bytes(self.raw)


class SmtpServer:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS; `ca_file` is what the client must trust."""

    USER = "hub-alerts"
    PASSWORD = "smtp-password-for-tests"

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        ca = tls.make_ca("alert test CA")
        pair = tls.issue(ca, "127.0.0.1", dns=["localhost"], ips=[ipaddress.ip_address("127.0.0.1")])
        self.ca_file = directory / "smtp-ca.crt"
        self.ca_file.write_bytes(tls.cert_pem(ca.cert))
        cert, key = directory / "smtp.crt", directory / "smtp.key"
        tls.write_pair(pair, cert, key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.mails: list[Mail] = []
        server = self

        class Handler:
            async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
                server.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
                                         session.ssl is not None, bool(session.authenticated)))
                return "250 OK"

        def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and data.login == self.USER.encode() \
                and data.password == self.PASSWORD.encode()
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator, auth_require_tls=True)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()

    def values(self) -> dict[str, str]:
        """The ALERT_SMTP_* settings that reach this server."""
        return {"ALERT_SMTP_HOST": "127.0.0.1", "ALERT_SMTP_PORT": str(self.port), "ALERT_SMTP_STARTTLS": "on",
                "ALERT_SMTP_CA_FILE": str(self.ca_file), "ALERT_SMTP_USER": self.USER,
                "ALERT_SMTP_PASSWORD": self.PASSWORD, "ALERT_SMTP_FROM": "hub@hospital.example",
                "ALERT_SMTP_TO": "oncall@hospital.example,pacs-team@hospital.example"}


class TcpRelay:
    """127.0.0.1:port -> target, which `cut()` takes away (listener and live connections) and `restore()` gives back."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            victims, self._sockets = self._sockets, []
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for s in victims:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
