"""Alerts: the message about an incident, the channels that carry it, the test alert, and the reads.

The worker's alerter (worker/alerter.py) decides when an incident opens, is repeated and
resolves; this module words the message and sends it. Two channels:

- **webhook** (ALERT_WEBHOOK_URL): one JSON POST per message. Its `text` is what Slack
  incoming webhooks and Teams connectors show (the body is also a valid Teams
  MessageCard); `incident` carries the same facts for a program. The body is signed:
  header `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the exact body bytes>` with
  ALERT_WEBHOOK_SECRET. Retried with backoff on a transport error, a 5xx, 408 or 429.
- **email** (ALERT_SMTP_HOST): smtplib, STARTTLS first when ALERT_SMTP_STARTTLS is on
  (the server's certificate is verified against ALERT_SMTP_CA_FILE or the system's CAs;
  a server without STARTTLS is refused, never written to in clear), then the login.

No patient data: a message names studies by the hub's internal id and their accession
number only, never a patient's name or ID (the alerter never selects them). Errors are
described without the webhook's URL (Slack's and Teams' URLs are secrets themselves),
the signing secret or the SMTP password. A channel that starts failing is logged once;
every attempt is recorded in alert_deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text

from core import recorder
from core.states import AlertChannel, AlertMessage, IncidentKind

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
ATTEMPTS = 3  # per message and channel
BACKOFF_S = 1.0  # before the 2nd attempt; doubled before each next one
TIMEOUT_S = 10.0
RETRY_HTTP = frozenset({408, 429})

TITLES: dict[str, str] = {
    IncidentKind.JOB_DEAD: "Dead jobs",
    IncidentKind.AI_OVERDUE: "AI results overdue",
    IncidentKind.DESTINATION_OUTAGE: "Destination outage",
    IncidentKind.DISK_LOW: "DICOM storage low",
    IncidentKind.NO_LIVE_WORKER: "No worker follows Orthanc's changes",
    IncidentKind.ORTHANC_UNREACHABLE: "Orthanc unreachable",
    IncidentKind.DATABASE_UNREACHABLE: "Database unreachable",
    IncidentKind.RULES_REFUSED: "routing.yml refused",
    IncidentKind.SENDER_REJECTED: "AI sender refused",
    IncidentKind.TEST: "Test alert",
}
LABELS: dict[str, str] = {
    AlertMessage.OPEN: "OPEN", AlertMessage.REPEAT: "STILL OPEN", AlertMessage.RESOLVE: "RESOLVED",
    AlertMessage.TEST: "TEST",
}


class AlertError(RuntimeError):
    """An alert cannot be sent at all (no channel configured)."""


def hub_name(settings: Settings) -> str:
    """How messages name this hub: Orthanc's AE title and the machine."""
    return f"{settings.orthanc_aet} on {socket.gethostname()}"


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for `body`: `sha256=` and the hex HMAC-SHA256 with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver does: recompute the signature over the exact bytes received, compare in constant time."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def _local(value: datetime | None, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else ""


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@dataclass(frozen=True)
class Notice:
    """One message about one incident, worded once for every channel."""

    incident_id: int
    kind: str
    key: str
    message: AlertMessage
    summary: str
    detail: dict[str, Any]
    occurrences: int
    opened_at: datetime
    resolved_at: datetime | None
    hub: str
    zone: ZoneInfo

    @property
    def title(self) -> str:
        return TITLES.get(self.kind, self.kind)

    def subject(self) -> str:
        key = f": {self.key}" if self.kind != IncidentKind.TEST else ""
        return f"[{LABELS[self.message]}] {self.title}{key} ({self.hub})"

    def text(self) -> str:
        zone_name = str(self.zone)
        if self.message == AlertMessage.RESOLVE:
            end = self.resolved_at or datetime.now(UTC)
            first = f"RESOLVED after {_duration((end - self.opened_at).total_seconds())}: {self.title} ({self.key}). " \
                    f"It was: {self.summary}"
        else:
            first = f"{LABELS[self.message]}: {self.summary}"
        lines = [first]
        lines += [str(line) for line in self.detail.get("lines", [])]
        since = f"open since {_local(self.opened_at, self.zone)} {zone_name}"
        if self.resolved_at is not None and self.message == AlertMessage.RESOLVE:
            since += f", resolved {_local(self.resolved_at, self.zone)}"
        number = f"#{self.incident_id}" if self.incident_id else "(not recorded yet)"
        lines.append(f"Incident {number} ({self.kind}, {self.key}), {since}.")
        lines.append(f"Hub: {self.hub}. Details: the app's Alerts page, or `./orthanc alerts`.")
        return "\n".join(lines)

    def payload(self, sent_at: datetime) -> dict[str, Any]:
        resolved = self.message in (AlertMessage.RESOLVE, AlertMessage.TEST)
        return {
            # Slack (`text`) and Teams (a MessageCard: `@type`, `@context`, `summary`, `title`, `text`).
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": self.subject(),
            "title": self.subject(),
            "themeColor": "2E7D32" if resolved else "C62828",
            "text": self.text(),
            # The same facts, for a program.
            "hub": self.hub,
            "sent_at": sent_at.isoformat(),
            "message": str(self.message),
            "incident": {
                "id": self.incident_id, "kind": self.kind, "key": self.key, "summary": self.summary,
                "occurrences": self.occurrences, "opened_at": self.opened_at.isoformat(),
                "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
                "detail": {k: v for k, v in self.detail.items() if k != "lines"},
            },
        }


@dataclass(frozen=True)
class Attempt:
    """One try of one channel: what alert_deliveries records."""

    channel: AlertChannel
    attempt: int
    at: datetime
    ok: bool
    error: str | None = None


class Channel(Protocol):
    name: AlertChannel

    def send(self, notice: Notice) -> list[Attempt]: ...


def _retrying(channel: AlertChannel, once: Callable[[], tuple[bool, str | None, bool]],
              sleep: Callable[[float], None]) -> list[Attempt]:
    """Call `once` (-> ok, error, worth retrying) up to ATTEMPTS times with doubling backoff."""
    attempts = []
    for number in range(1, ATTEMPTS + 1):
        ok, error, again = once()
        attempts.append(Attempt(channel, number, datetime.now(UTC), ok, error))
        if ok or not again or number == ATTEMPTS:
            break
        sleep(BACKOFF_S * 2 ** (number - 1))
    return attempts


@dataclass
class WebhookChannel:
    url: str
    secret: str
    timeout: float = TIMEOUT_S
    sleep: Callable[[float], None] = time.sleep
    name: AlertChannel = AlertChannel.WEBHOOK

    def send(self, notice: Notice) -> list[Attempt]:
        import httpx  # slow to import; the CLI imports this module at start (ops/cli_ops.py)

        body = json.dumps(notice.payload(datetime.now(UTC)), ensure_ascii=False, default=str).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", SIGNATURE_HEADER: sign(body, self.secret),
                   "User-Agent": "routing-hub-alerts"}

        def once() -> tuple[bool, str | None, bool]:
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                    answer = client.post(self.url, content=body, headers=headers)
            except httpx.TimeoutException:
                return False, f"the webhook did not answer within {self.timeout:.0f} s", True
            except (httpx.UnsupportedProtocol, httpx.InvalidURL):
                return False, "ALERT_WEBHOOK_URL is not a URL the hub can post to", False
            except (httpx.HTTPError, OSError) as exc:
                return False, f"cannot reach the webhook: {self._scrub(exc)}", True
            if 200 <= answer.status_code < 300:
                return True, None, False
            again = answer.status_code >= 500 or answer.status_code in RETRY_HTTP
            return False, f"the webhook answered HTTP {answer.status_code} {answer.reason_phrase}".strip(), again

        return _retrying(self.name, once, self.sleep)

    def _scrub(self, exc: BaseException) -> str:
        """The error without the URL (a Slack or Teams URL is itself a secret)."""
        message = str(exc) or type(exc).__name__
        for secret in (self.url, self.url.split("?")[0], self.secret):
            if secret:
                message = message.replace(secret, "<ALERT_WEBHOOK_URL>")
        return message[:300]


@dataclass
class EmailChannel:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool
    user: str = ""
    password: str = field(default="", repr=False)
    ca_file: str | None = None
    timeout: float = TIMEOUT_S
    sleep: Callable[[float], None] = time.sleep
    name: AlertChannel = AlertChannel.EMAIL

    def message(self, notice: Notice) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Subject"] = notice.subject()
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = make_msgid("hub-alert", domain=self.sender.rpartition("@")[2] or None)
        mail.set_content(notice.text())
        return mail

    def send(self, notice: Notice) -> list[Attempt]:
        mail = self.message(notice)

        def once() -> tuple[bool, str | None, bool]:
            try:
                # local_hostname given: smtplib would otherwise ask DNS for this machine's FQDN
                with smtplib.SMTP(self.host, self.port, local_hostname=socket.gethostname(),
                                  timeout=self.timeout) as smtp:
                    smtp.ehlo()
                    if self.starttls:
                        if not smtp.has_extn("starttls"):
                            return False, (f"{self.host}:{self.port} does not offer STARTTLS; nothing was sent "
                                           "(ALERT_SMTP_STARTTLS is on)"), False
                        smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                        smtp.ehlo()
                    if self.user:
                        smtp.login(self.user, self.password)
                    smtp.send_message(mail)
            except smtplib.SMTPAuthenticationError as exc:
                return False, f"the mail server refused the login of ALERT_SMTP_USER (SMTP {exc.smtp_code})", False
            except smtplib.SMTPRecipientsRefused as exc:
                codes = sorted({code for code, _ in exc.recipients.values()})
                return False, f"the mail server refused every recipient (SMTP {codes})", False
            except smtplib.SMTPResponseException as exc:
                reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
                return False, f"the mail server answered SMTP {exc.smtp_code}: {reply[:200]}", 400 <= exc.smtp_code < 500
            except ssl.SSLCertVerificationError as exc:
                return False, (f"the mail server's certificate is not trusted ({exc.verify_message}); "
                               "give its CA in ALERT_SMTP_CA_FILE"), False
            except (smtplib.SMTPException, ssl.SSLError) as exc:
                return False, f"SMTP with {self.host}:{self.port} failed: {type(exc).__name__}: {str(exc)[:200]}", True
            except TimeoutError:
                return False, f"the mail server {self.host}:{self.port} did not answer within {self.timeout:.0f} s", True
            except OSError as exc:
                return False, f"cannot reach the mail server {self.host}:{self.port}: {exc.strerror or exc}", True
            return True, None, False

        return _retrying(self.name, once, self.sleep)


def channels_from(settings: Settings) -> list[Channel]:
    """The channels the settings switch on (none when neither address is set)."""
    found: list[Channel] = []
    if settings.alert_webhook_url:
        found.append(WebhookChannel(settings.alert_webhook_url, settings.alert_webhook_secret.get_secret_value()))
    if settings.alert_smtp_host:
        found.append(EmailChannel(
            settings.alert_smtp_host, settings.alert_smtp_port, settings.alert_smtp_from, settings.alert_smtp_to,
            settings.alert_smtp_starttls, settings.alert_smtp_user, settings.alert_smtp_password.get_secret_value(),
            str(settings.alert_smtp_ca_file) if settings.alert_smtp_ca_file else None,
        ))
    return found


def describe_channels(settings: Settings) -> list[str]:
    """What is configured, for the app and the CLI: no URL (it may be secret), no password."""
    lines = []
    if settings.alert_webhook_url:
        lines.append("webhook: on (ALERT_WEBHOOK_URL set; bodies signed with ALERT_WEBHOOK_SECRET)")
    else:
        lines.append("webhook: off (ALERT_WEBHOOK_URL empty)")
    if settings.alert_smtp_host:
        tls = "STARTTLS" if settings.alert_smtp_starttls else "no TLS"
        lines.append(f"e-mail: on, via {settings.alert_smtp_host}:{settings.alert_smtp_port} ({tls}) to "
                     f"{len(settings.alert_smtp_to)} recipient(s)")
    else:
        lines.append("e-mail: off (ALERT_SMTP_HOST empty)")
    return lines


class FailureLog:
    """Logs a channel's failure once, when it starts failing (or fails differently), and its recovery."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}

    def note(self, attempts: Sequence[Attempt]) -> None:
        if not attempts:
            return
        last = attempts[-1]
        name = str(last.channel)
        with self._lock:
            before = self._failing.get(name)
            if last.ok:
                self._failing.pop(name, None)
            else:
                self._failing[name] = last.error or "failed"
        if last.ok and before is not None:
            log.info("alert channel works again", extra={"fields": {"channel": name}})
        elif not last.ok and before != last.error:
            log.warning("alert channel failed; the hub keeps routing, and each attempt is recorded in "
                        "alert_deliveries", extra={"fields": {"channel": name, "error": last.error,
                                                              "attempts": len(attempts)}})


FAILURES = FailureLog()


def send_notice(notice: Notice, channels: Sequence[Channel], failures: FailureLog = FAILURES) -> list[Attempt]:
    """Send on every channel (a failing one does not stop the others); every attempt is returned."""
    attempts: list[Attempt] = []
    for channel in channels:
        try:
            tried = channel.send(notice)
        except Exception as exc:  # a channel's bug must not stop the alerter, nor the other channel
            log.exception("alert channel raised", extra={"fields": {"channel": str(channel.name)}})
            tried = [Attempt(channel.name, 1, datetime.now(UTC), False, f"{type(exc).__name__} in the hub")]
        failures.note(tried)
        attempts += tried
    return attempts


def record_attempts(conn: Connection, incident_id: int, message: AlertMessage, attempts: Sequence[Attempt]) -> None:
    for a in attempts:
        recorder.alert_delivered(conn, incident_id, channel=a.channel, message=message, attempt=a.attempt, at=a.at,
                                 ok=a.ok, error=a.error)


def send_test(engine: Engine, settings: Settings, *, actor: str, source: str,
              channels: Sequence[Channel] | None = None) -> tuple[int, list[Attempt]]:
    """Send a test alert on every configured channel, recorded as a `test` incident and audited.

    Returns the incident's id and every attempt. Raises AlertError when no channel is
    configured (nothing is recorded then).
    """
    chosen = list(channels) if channels is not None else channels_from(settings)
    if not chosen:
        raise AlertError("no alert channel is configured: set ALERT_WEBHOOK_URL and/or ALERT_SMTP_HOST in .env "
                         "(docs/operations.md, 'Alerts')")
    now = datetime.now(UTC)
    summary = f"Test alert, asked for by {actor} ({source}): if you read this, alerts reach you."
    with engine.begin() as conn:
        seen = recorder.incident_seen(conn, IncidentKind.TEST, f"test-{uuid.uuid4().hex[:12]}", at=now,
                                      summary=summary, detail={"actor": actor, "source": source}, occurrences=1)
    notice = Notice(seen.id, IncidentKind.TEST, "test", AlertMessage.TEST, summary, {}, 1, now, None,
                    hub_name(settings), settings.zone)
    attempts = send_notice(notice, chosen)
    done = datetime.now(UTC)
    outcome = {str(c.name): _outcome([a for a in attempts if a.channel == c.name]) for c in chosen}
    with engine.begin() as conn:
        record_attempts(conn, seen.id, AlertMessage.TEST, attempts)
        recorder.incident_notified(conn, seen.id, at=done)
        recorder.incident_resolved(conn, seen.id, at=done)
        recorder.audit(conn, actor=actor, source=source, action="alerts.test", target=f"incident:{seen.id}",
                       after=outcome)
    return seen.id, attempts


def _outcome(attempts: Sequence[Attempt]) -> str:
    if not attempts:
        return "not tried"
    last = attempts[-1]
    return "sent" if last.ok else f"failed after {len(attempts)} attempt(s): {last.error}"


def outcome_lines(attempts: Sequence[Attempt]) -> list[str]:
    """One line per channel: 'webhook: sent' or 'email: failed after 3 attempt(s): ...'."""
    names = list(dict.fromkeys(a.channel for a in attempts))
    return [f"{name}: {_outcome([a for a in attempts if a.channel == name])}" for name in names]


# --- reads (app Alerts page, ./orthanc alerts, /metrics) ---------------------------------

_INCIDENT_COLUMNS = (
    "i.id, i.kind, i.key, i.opened_at, i.last_seen_at, i.resolved_at, i.occurrences, i.summary, i.detail, "
    "i.last_notified_at, d.channel AS last_channel, d.ok AS last_ok, d.error AS last_error, d.at AS last_attempt_at"
)
_LAST_DELIVERY = (
    "LEFT JOIN LATERAL (SELECT channel, ok, error, at FROM alert_deliveries a WHERE a.incident_id = i.id "
    "ORDER BY a.at DESC, a.id DESC LIMIT 1) d ON true"
)


def open_incidents(conn: Connection) -> list[dict[str, Any]]:
    """Open incidents, oldest first, each with its last delivery attempt."""
    return [dict(r) for r in conn.execute(text(
        f"SELECT {_INCIDENT_COLUMNS} FROM incidents i {_LAST_DELIVERY} "  # noqa: S608 - constant text
        "WHERE i.resolved_at IS NULL ORDER BY i.opened_at, i.id"
    )).mappings()]


def past_incidents(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Resolved incidents (test alerts included), most recently resolved first."""
    return [dict(r) for r in conn.execute(text(
        f"SELECT {_INCIDENT_COLUMNS} FROM incidents i {_LAST_DELIVERY} "  # noqa: S608 - constant text
        "WHERE i.resolved_at IS NOT NULL ORDER BY i.resolved_at DESC, i.id DESC LIMIT :lim"
    ), {"lim": limit}).mappings()]


def deliveries(conn: Connection, incident_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(
        "SELECT at, channel, message, attempt, ok, error FROM alert_deliveries WHERE incident_id = :id "
        "ORDER BY at, id"), {"id": incident_id}).mappings()]


def open_counts(conn: Connection) -> dict[str, int]:
    """Open incidents per kind (test alerts are never open for long and are left out)."""
    rows = conn.execute(text("SELECT kind, count(*) FROM incidents WHERE resolved_at IS NULL AND kind <> :test "
                             "GROUP BY kind"), {"test": IncidentKind.TEST}).all()
    return {str(kind): int(n) for kind, n in rows}
