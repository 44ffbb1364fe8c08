"""The alerter: incidents that reach people (issue 18). Every worker runs one; one sends.

Every ALERT_CHECK_S the alerter that holds the advisory lock ALERTER_LOCK_KEY (a
session lock on a connection of its own, like the /changes cursor's: when its worker
dies, PostgreSQL frees it and another worker's alerter takes over) evaluates the
conditions below against the database and what it measures itself (`evaluate`),
folds them into incidents (one open incident per kind and key, core/recorder.py),
resolves the incidents whose condition is gone, and sends, from the recorded state:

- **open** once, for an open incident never notified;
- **repeat** while it stays open, no more often than ALERT_REPEAT;
- **resolve** once, for an incident resolved after its open message went out.

Deciding from the rows (last_notified_at) rather than from memory means a worker that
takes the lease over neither repeats an open message nor forgets a resolve.

Conditions (kind: key):

- job_dead (destination): jobs in state `dead`, folded per destination: a burst of 200
  is one incident with a count; resolved when an operator has retried or cancelled them.
- ai_overdue (AI_MODALITY): studies with status ai_overdue (worker/tailer.check_ai_overdue
  raised it after AI_RESULT_TIMEOUT) that went overdue in the last AI_OVERDUE_HORIZON_S;
  resolved when their results arrive (or they are older than that: Studies page).
- destination_outage (destination): an outage hold older than ALERT_OUTAGE_MIN minutes.
- disk_low (DICOM_STORAGE): free space below DISK_FREE_WARN_MB (worker/storage.py).
- no_live_worker (changes): no live worker has owned the /changes cursor for NO_TAILER_S
  (its heartbeats): nothing new is recorded or routed.
- orthanc_unreachable (orthanc): Orthanc's REST API has not answered this worker for
  UNREACHABLE_GRACE_S.
- database_unreachable (QI_DB): PostgreSQL has not answered for UNREACHABLE_GRACE_S. The
  alerter cannot record then, nor lease: the worker that held the lease at its last
  look keeps the incident in memory and sends open (and repeat) anyway; once the
  database answers it records the incident, resolved, with the attempts it made, and
  the resolve message goes out like any other.
- rules_refused (routing.yml file name): the saved rules file is refused (config_status).
- sender_rejected (AET@address): a series claimed an AI sender from an unregistered
  address (sender_rejected events) in the last SENDER_QUIET_S; resolved after that long
  without another.

When the database is up but no channel is configured, incidents are still recorded
(the Alerts page, `./orthanc alerts`, `hub_incidents_open`) and nothing is sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from core import alerts, queries, recorder, sender_checks
from core.alerts import Attempt, Channel, Notice
from core.disk import StorageStatus
from core.orthanc_client import OrthancClient, OrthancError
from core.rules_status import STATUS_NAME, rules_problem
from core.settings import Settings
from core.states import AlertMessage, EventType, HoldKind, IncidentKind, JobState, StudyStatus

log = logging.getLogger(__name__)

ALERTER_LOCK_KEY = 0x0A7C_0003  # beside CURSOR_LOCK_KEY (worker/tailer.py) and CLAIM_LOCK_KEY (worker/dispatcher.py)
UNREACHABLE_GRACE_S = 60.0
NO_TAILER_S = 60.0
AI_OVERDUE_HORIZON_S = 24 * 3600.0
SENDER_QUIET_S = 3600.0
RESOLVE_HORIZON_S = 24 * 3600.0  # a resolve still unsent after this long is dropped
SAMPLE = 5  # studies named in a message


@dataclass(frozen=True)
class Condition:
    """Something wrong right now: an incident of `kind` for `key`, worded for people."""

    kind: IncidentKind
    key: str
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    occurrences: int = 1


@dataclass(frozen=True)
class Facts:
    """What the alerter measured itself, outside the database."""

    storage: StorageStatus | None = None
    orthanc_down_since: datetime | None = None
    orthanc_error: str | None = None
    watching_since: datetime = datetime(2000, 1, 1, tzinfo=UTC)  # when this alerter started looking


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _since(at: datetime, settings: Settings, now: datetime) -> str:
    local = at.astimezone(settings.zone)
    fmt = "%H:%M" if local.date() == now.astimezone(settings.zone).date() else "%Y-%m-%d %H:%M"
    return f"{local.strftime(fmt)} {settings.tz}"


def _study_lines(items: Sequence[dict[str, Any]], total: int) -> list[str]:
    """Studies by internal id and accession number: never a patient's name or ID."""
    lines = [f"study {i['study']} (accession {i.get('accession') or 'none'})"
             + (f", job {i['job']}" if i.get("job") else "") for i in items]
    if total > len(items):
        lines.append(f"... and {total - len(items)} more")
    return lines


def evaluate(conn: Connection, settings: Settings, now: datetime, facts: Facts) -> list[Condition]:
    """Every alert condition true at `now`. Reads only; no patient name or ID is selected."""
    return [
        *_dead_jobs(conn),
        *_ai_overdue(conn, settings, now),
        *_outages(conn, settings, now),
        *_disk(facts),
        *_no_tailer(conn, settings, now, facts),
        *_orthanc(settings, now, facts),
        *_rules(conn, settings, now),
        *_rejected_senders(conn, now),
    ]


def _dead_jobs(conn: Connection) -> list[Condition]:
    rows = conn.execute(
        text(
            """
            WITH d AS (
                SELECT destination, count(*) AS n FROM routing_jobs WHERE state = :dead GROUP BY destination
            )
            SELECT d.destination, d.n, last.last_error, last.attempts, sample.items
            FROM d
            CROSS JOIN LATERAL (
                SELECT j.last_error, j.attempts FROM routing_jobs j WHERE j.state = :dead
                  AND j.destination = d.destination ORDER BY j.finished_at DESC NULLS LAST, j.id DESC LIMIT 1
            ) last
            CROSS JOIN LATERAL (
                SELECT coalesce(jsonb_agg(jsonb_build_object('job', x.id, 'study', x.study_id,
                                                             'accession', x.accession_number)
                                          ORDER BY x.finished_at DESC NULLS LAST, x.id DESC), '[]') AS items
                FROM (SELECT j.id, j.study_id, j.finished_at, s.accession_number FROM routing_jobs j
                      JOIN studies s ON s.id = j.study_id
                      WHERE j.state = :dead AND j.destination = d.destination
                      ORDER BY j.finished_at DESC NULLS LAST, j.id DESC LIMIT :sample) x
            ) sample
            ORDER BY d.destination
            """
        ),
        {"dead": JobState.DEAD, "sample": SAMPLE},
    ).all()
    found = []
    for row in rows:
        error = (row.last_error or "no error recorded").splitlines()[0][:200]
        summary = (f"{_plural(row.n, 'job', 'jobs')} to {row.destination} "
                   f"{'is' if row.n == 1 else 'are'} dead (gave up after {_plural(row.attempts, 'attempt', 'attempts')}) and "
                   f"{'waits' if row.n == 1 else 'wait'} for an operator: retry or cancel. Last error: {error}")
        found.append(Condition(IncidentKind.JOB_DEAD, row.destination, summary,
                               {"dead_jobs": row.n, "studies": row.items, "last_error": error,
                                "lines": _study_lines(row.items, row.n)}, row.n))
    return found


def _ai_overdue(conn: Connection, settings: Settings, now: datetime) -> list[Condition]:
    rows = conn.execute(
        text(
            """
            SELECT s.id, s.accession_number, o.at, count(*) OVER () AS total FROM studies s
            CROSS JOIN LATERAL (SELECT max(e.at) AS at FROM events e WHERE e.study_id = s.id AND e.type = :overdue) o
            WHERE s.status = :status AND o.at >= :horizon
            ORDER BY o.at DESC, s.id DESC LIMIT :sample
            """
        ),
        {"overdue": EventType.AI_OVERDUE, "status": StudyStatus.AI_OVERDUE, "sample": SAMPLE,
         "horizon": now - timedelta(seconds=AI_OVERDUE_HORIZON_S)},
    ).all()
    if not rows:
        return []
    total = int(rows[0].total)
    items = [{"study": r.id, "accession": r.accession_number} for r in rows]
    minutes = settings.ai_result_timeout / 60
    summary = (f"{_plural(total, 'study', 'studies')} sent to {settings.ai_modality} got no AI result within "
               f"{minutes:.0f} min (AI_RESULT_TIMEOUT). Check the AI node; a late result is still recorded and routed.")
    return [Condition(IncidentKind.AI_OVERDUE, settings.ai_modality, summary,
                      {"studies": items, "overdue": total, "lines": _study_lines(items, total)}, total)]


def _outages(conn: Connection, settings: Settings, now: datetime) -> list[Condition]:
    rows = conn.execute(
        text(
            """
            SELECT h.destination, h.held_at, h.last_error,
                   (SELECT count(*) FROM routing_jobs j WHERE j.destination = h.destination
                      AND j.state = ANY(:open)) AS waiting
            FROM destination_holds h WHERE h.kind = :outage AND h.held_at <= :limit ORDER BY h.destination
            """
        ),
        {"outage": HoldKind.OUTAGE, "open": list(queries.OPEN_JOB_STATES),
         "limit": now - timedelta(minutes=settings.alert_outage_min)},
    ).all()
    found = []
    for row in rows:
        error = (row.last_error or "no answer").splitlines()[0][:200]
        minutes = (now - row.held_at).total_seconds() / 60
        summary = (f"{row.destination} has not answered C-ECHO since {_since(row.held_at, settings, now)} "
                   f"({minutes:.0f} min): {_plural(row.waiting, 'job waits', 'jobs wait')} for it, spending no "
                   f"attempts; they go out when it answers. Last error: {error}")
        found.append(Condition(IncidentKind.DESTINATION_OUTAGE, row.destination, summary,
                               {"held_at": row.held_at, "jobs_waiting": row.waiting, "last_error": error}))
    return found


def _disk(facts: Facts) -> list[Condition]:
    status = facts.storage
    if status is None or status.status != "low":
        return []
    return [Condition(IncidentKind.DISK_LOW, "DICOM_STORAGE", status.message,
                      {"free_bytes": status.free_bytes, "total_bytes": status.total_bytes,
                       "warn_below_bytes": status.warn_below_bytes})]


def _no_tailer(conn: Connection, settings: Settings, now: datetime, facts: Facts) -> list[Condition]:
    if (now - facts.watching_since).total_seconds() < NO_TAILER_S:
        return []  # a worker that just started has not published its first heartbeat as the owner yet
    owner_at = conn.execute(
        text("SELECT max(heartbeat_at) FROM worker_heartbeats WHERE owns_cursor")
    ).scalar_one()
    if owner_at is not None and (now - owner_at).total_seconds() < NO_TAILER_S:
        return []
    last = f"last seen {_since(owner_at, settings, now)}" if owner_at else "none recorded"
    summary = (f"No live worker follows Orthanc's /changes ({last}): new studies are neither recorded nor routed. "
               "Check the worker processes (make status, ./orthanc logs worker).")
    return [Condition(IncidentKind.NO_LIVE_WORKER, "changes", summary, {"owner_heartbeat_at": owner_at})]


def _orthanc(settings: Settings, now: datetime, facts: Facts) -> list[Condition]:
    since = facts.orthanc_down_since
    if since is None or (now - since).total_seconds() < UNREACHABLE_GRACE_S:
        return []
    summary = (f"Orthanc ({settings.orthanc_url}) has not answered the worker since {_since(since, settings, now)}: "
               f"nothing is routed meanwhile. {facts.orthanc_error or ''}").strip()
    return [Condition(IncidentKind.ORTHANC_UNREACHABLE, "orthanc", summary, {"since": since})]


def _rules(conn: Connection, settings: Settings, now: datetime) -> list[Condition]:
    row = queries.config_status(conn, STATUS_NAME)
    if row is None or not row["error"]:
        return []
    name = settings.routing_rules.name
    problem = rules_problem(row["error"], row["loaded_at"], settings.zone, file_name=name, now=now)
    summary = f"{problem}. Fix the file (the Rules page shows the error); the worker reloads it by itself."
    return [Condition(IncidentKind.RULES_REFUSED, name, summary, {"refused_at": row["error_at"]})]


def _rejected_senders(conn: Connection, now: datetime) -> list[Condition]:
    found = []
    for row in sender_checks.rejected_senders(conn, now - timedelta(seconds=SENDER_QUIET_S)):
        summary = (f"{row['text']}: kept unrouted. If that is really the AI node, correct its registered host; "
                   "otherwise find the device at that address (README, Troubleshooting).")
        found.append(Condition(IncidentKind.SENDER_REJECTED, f"{row['aet']}@{row['remote_ip']}", summary,
                               {"series": row["series"], "instances": row["instances"], "last_at": row["last_at"]},
                               int(row["series"])))
    return found


# --- the thread --------------------------------------------------------------------------


class Lease(Protocol):
    """worker.main.SessionLock on ALERTER_LOCK_KEY."""

    def held(self) -> bool: ...

    def release(self) -> None: ...


@dataclass
class _MemoryIncident:
    """database_unreachable, while it cannot be recorded."""

    opened_at: datetime
    summary: str
    detail: dict[str, Any]
    notified_at: datetime | None = None
    sent: list[tuple[AlertMessage, list[Attempt]]] = field(default_factory=list)


class Alerter:
    def __init__(
        self, settings: Settings, engine: Engine, orthanc: OrthancClient, lease: Lease,
        storage: Callable[[], StorageStatus] | None = None, channels: Sequence[Channel] | None = None,
        unreachable_grace_s: float = UNREACHABLE_GRACE_S,
    ):
        self.settings = settings
        self.engine = engine
        self.orthanc = orthanc
        self.lease = lease
        self.storage = storage
        self.channels = list(channels) if channels is not None else alerts.channels_from(settings)
        self.grace = timedelta(seconds=unreachable_grace_s)
        self.repeat = timedelta(seconds=settings.alert_repeat)
        self.hub = alerts.hub_name(settings)
        self.failures = alerts.FailureLog()
        self.started_at = datetime.now(UTC)
        self.held_last = False  # held the lease at the last look that reached the database
        self.orthanc_down_since: datetime | None = None
        self.orthanc_error: str | None = None
        self.db_down_since: datetime | None = None
        self.db_incident: _MemoryIncident | None = None

    def run_forever(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(self.settings.alert_check_s):
                try:
                    self.check_once()
                except Exception:  # the alerter must outlive any single bad round, and never stop routing
                    log.exception("alert check failed; trying again at the next one")
        finally:
            self.lease.release()

    def check_once(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        try:
            held = self.lease.held()
            if self.db_incident is not None:
                self._database_back(now)
            self.db_down_since = None
            self.held_last = held
            self._probe_orthanc(now)  # by every worker, so that one taking the lease over knows since when
            if not held:
                return
            facts = Facts(self.storage() if self.storage else None, self.orthanc_down_since, self.orthanc_error,
                          self.started_at)
            with self.engine.begin() as conn:
                self._fold(conn, evaluate(conn, self.settings, now, facts), now)
                due = self._due(conn, now) if self.channels else []
            for notice in due:
                self._send(notice, now)
        except DBAPIError as exc:
            self._database_down(now, exc)

    # --- incidents --------------------------------------------------------------------

    def _fold(self, conn: Connection, conditions: Sequence[Condition], now: datetime) -> None:
        """Open or refresh an incident per condition; resolve the open ones whose condition is gone."""
        current = set()
        for c in conditions:
            current.add((str(c.kind), c.key))
            seen = recorder.incident_seen(conn, c.kind, c.key, at=now, summary=c.summary, detail=c.detail,
                                          occurrences=c.occurrences)
            if seen.opened:
                log.warning("incident opened", extra={"fields": {"incident": seen.id, "kind": str(c.kind),
                                                                 "key": c.key, "occurrences": c.occurrences}})
        for row in conn.execute(
            text("SELECT id, kind, key FROM incidents WHERE resolved_at IS NULL AND kind <> ALL(:own) FOR UPDATE"),
            {"own": [IncidentKind.TEST, IncidentKind.DATABASE_UNREACHABLE]},
        ).all():
            if (row.kind, row.key) not in current and recorder.incident_resolved(conn, row.id, at=now):
                log.info("incident resolved", extra={"fields": {"incident": row.id, "kind": row.kind, "key": row.key}})

    def _due(self, conn: Connection, now: datetime) -> list[Notice]:
        """The messages owed, from the rows: open, repeat, resolve."""
        rows = conn.execute(
            text(
                """
                SELECT id, kind, key, summary, detail, occurrences, opened_at, resolved_at, last_notified_at
                FROM incidents WHERE kind <> :test AND (
                    (resolved_at IS NULL AND (last_notified_at IS NULL OR last_notified_at <= :repeat_before))
                    OR (resolved_at >= :horizon AND last_notified_at < resolved_at))
                ORDER BY opened_at, id
                """
            ),
            {"test": IncidentKind.TEST, "repeat_before": now - self.repeat,
             "horizon": now - timedelta(seconds=RESOLVE_HORIZON_S)},
        ).all()
        notices = []
        for r in rows:
            if r.resolved_at is not None:
                message = AlertMessage.RESOLVE
            else:
                message = AlertMessage.OPEN if r.last_notified_at is None else AlertMessage.REPEAT
            notices.append(Notice(r.id, r.kind, r.key, message, r.summary, dict(r.detail or {}), r.occurrences,
                                  r.opened_at, r.resolved_at, self.hub, self.settings.zone))
        return notices

    def _send(self, notice: Notice, now: datetime) -> None:
        """Send, then record: `now` (the round's time) becomes last_notified_at, so a resolve sent in the
        round that resolved the incident is not owed again."""
        attempts = alerts.send_notice(notice, self.channels, self.failures)
        with self.engine.begin() as conn:
            alerts.record_attempts(conn, notice.incident_id, notice.message, attempts)
            recorder.incident_notified(conn, notice.incident_id, at=now)

    # --- what the database cannot tell --------------------------------------------------

    def _probe_orthanc(self, now: datetime) -> None:
        try:
            self.orthanc.system()
        except OrthancError as exc:
            if self.orthanc_down_since is None:
                self.orthanc_down_since = now
            self.orthanc_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        else:
            self.orthanc_down_since = None
            self.orthanc_error = None

    def _database_down(self, now: datetime, exc: DBAPIError) -> None:
        if self.db_down_since is None:
            self.db_down_since = now
        if not self.held_last or not self.channels:
            return  # only the worker that last held the lease speaks for the hub
        if now - self.db_down_since < self.grace:
            return
        incident = self.db_incident
        if incident is None:
            s = self.settings
            summary = (f"PostgreSQL ({s.postgres_host}:{s.postgres_port}, database {s.qi_db}) has not answered the "
                       f"worker since {_since(self.db_down_since, s, now)} "
                       f"({type(exc.orig).__name__ if exc.orig else type(exc).__name__}): nothing is recorded or "
                       "routed meanwhile. This incident is recorded when the database answers again.")
            incident = self.db_incident = _MemoryIncident(self.db_down_since, summary, {"since": self.db_down_since})
            message = AlertMessage.OPEN
        elif incident.notified_at is not None and now - incident.notified_at >= self.repeat:
            message = AlertMessage.REPEAT
        else:
            return
        notice = Notice(0, IncidentKind.DATABASE_UNREACHABLE, self.settings.qi_db, message, incident.summary,
                        incident.detail, 1, incident.opened_at, None, self.hub, self.settings.zone)
        attempts = alerts.send_notice(notice, self.channels, self.failures)
        incident.notified_at = now
        incident.sent.append((message, attempts))

    def _database_back(self, now: datetime) -> None:
        """Record the incident kept in memory, resolved now; the resolve message goes out with the others."""
        incident = self.db_incident
        assert incident is not None
        with self.engine.begin() as conn:
            incident_id = recorder.incident_recorded(
                conn, IncidentKind.DATABASE_UNREACHABLE, self.settings.qi_db, opened_at=incident.opened_at,
                last_seen_at=now, resolved_at=now, summary=incident.summary, detail=incident.detail,
                last_notified_at=incident.notified_at)
            for message, attempts in incident.sent:
                alerts.record_attempts(conn, incident_id, message, attempts)
        self.db_incident = None
        log.info("database answers again: its incident is recorded", extra={"fields": {"incident": incident_id}})
