"""The recording functions: every write the worker makes to studies, series, events, jobs.

Everything that reaches the QI views goes through here, so tests (and the demo
seeder) build their fixtures with these same functions. Each function takes an open
connection and never commits: the caller owns the transaction, which is how the
/changes cursor advances atomically with what it produced.

Stage timestamps are written once and never reset by a later re-stabilisation (the
defect that made the old dashboards read a 0 s AI round trip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Row, String, bindparam, text

from core.jsonutil import jsonable
from core.states import EventType, HoldKind, JobState, LinkedBy, Purpose, SeriesKind, StudyStatus


@dataclass(frozen=True)
class StudyInfo:
    """Study-level tags as read from Orthanc."""

    study_uid: str
    orthanc_id: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    description: str | None = None
    study_date: str | None = None
    study_time: str | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """Series-level tags and reception facts as read from Orthanc."""

    series_uid: str
    study_uid: str
    orthanc_id: str | None = None
    modality: str | None = None
    description: str | None = None
    series_number: str | None = None
    sender_aet: str | None = None
    instance_count: int = 0
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None


# PostgreSQL NOTIFY channel on which every worker hears that jobs became due (worker/wakeup.py).
WORK_CHANNEL = "hub_work"


def announce_work(conn: Connection) -> None:
    """Tell every worker, when this transaction commits, that jobs became due.

    An operator's retry, resend or release (the app, the API, the CLI) is then sent at
    once, not at the worker's next idle claim (POLL_INTERVAL). NOTIFY is transactional and
    PostgreSQL delivers one of identical notifications per transaction, so calling it per
    job costs one statement and sends one message.
    """
    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": WORK_CHANNEL})


def add_event(
    conn: Connection,
    study_id: int,
    type_: str,
    at: datetime,
    *,
    series_id: int | None = None,
    job_id: int | None = None,
    destination: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Append one timeline event and return its id."""
    return conn.execute(
        text(
            "INSERT INTO events (study_id, series_id, job_id, type, at, destination, detail) "
            "VALUES (:study, :series, :job, :type, :at, :dest, CAST(:detail AS jsonb)) RETURNING id"
        ),
        {
            "study": study_id, "series": series_id, "job": job_id, "type": type_, "at": at,
            "dest": destination, "detail": jsonable(detail or {}),
        },
    ).scalar_one()


def upsert_study(conn: Connection, info: StudyInfo, *, source_aet: str | None, received_at: datetime | None) -> int:
    """Create or update the study row; first_received_at only ever moves earlier."""
    return conn.execute(
        text(
            """
            INSERT INTO studies (study_uid, orthanc_id, patient_id, patient_name, accession_number,
                                 description, study_date, study_time, source_aet,
                                 first_received_at, last_received_at)
            VALUES (:uid, :oid, :pid, :pname, :acc, :descr, :sdate, :stime, :aet, :at, :at)
            ON CONFLICT (study_uid) DO UPDATE SET
                orthanc_id = COALESCE(studies.orthanc_id, EXCLUDED.orthanc_id),
                patient_id = COALESCE(EXCLUDED.patient_id, studies.patient_id),
                patient_name = COALESCE(EXCLUDED.patient_name, studies.patient_name),
                accession_number = COALESCE(EXCLUDED.accession_number, studies.accession_number),
                description = COALESCE(EXCLUDED.description, studies.description),
                study_date = COALESCE(EXCLUDED.study_date, studies.study_date),
                study_time = COALESCE(EXCLUDED.study_time, studies.study_time),
                source_aet = COALESCE(studies.source_aet, EXCLUDED.source_aet),
                first_received_at = LEAST(studies.first_received_at, EXCLUDED.first_received_at),
                last_received_at = GREATEST(studies.last_received_at, EXCLUDED.last_received_at),
                updated_at = now()
            RETURNING id
            """
        ),
        {
            "uid": info.study_uid, "oid": info.orthanc_id, "pid": info.patient_id,
            "pname": info.patient_name, "acc": info.accession_number, "descr": info.description,
            "sdate": info.study_date, "stime": info.study_time, "aet": source_aet, "at": received_at,
        },
    ).scalar_one()


def find_study_for_ai_result(conn: Connection, study_uid: str, accession: str | None) -> tuple[int, str] | None:
    """The original study an AI result belongs to: by StudyInstanceUID, then accession."""
    row = conn.execute(
        text("SELECT id FROM studies WHERE study_uid = :uid AND NOT orphan_ai_result"), {"uid": study_uid}
    ).first()
    if row:
        return row.id, LinkedBy.STUDY_UID
    if accession:
        row = conn.execute(
            text(
                "SELECT id FROM studies WHERE accession_number = :acc AND NOT orphan_ai_result "
                "ORDER BY first_received_at LIMIT 1"
            ),
            {"acc": accession},
        ).first()
        if row:
            return row.id, LinkedBy.ACCESSION
    return None


def upsert_series(
    conn: Connection, study_id: int, info: SeriesInfo, *, kind: str, linked_by: str | None
) -> tuple[int, bool]:
    """Create or update the series row; returns (series id, created now)."""
    row = conn.execute(
        text(
            """
            INSERT INTO series (series_uid, orthanc_id, study_id, study_uid, kind, linked_by,
                                sender_aet, modality, description, series_number, instance_count,
                                first_received_at, last_received_at)
            VALUES (:uid, :oid, :study, :study_uid, :kind, :linked, :aet, :mod, :descr, :num,
                    :count, :first, :last)
            ON CONFLICT (series_uid) DO UPDATE SET
                orthanc_id = COALESCE(series.orthanc_id, EXCLUDED.orthanc_id),
                sender_aet = COALESCE(series.sender_aet, EXCLUDED.sender_aet),
                modality = COALESCE(EXCLUDED.modality, series.modality),
                description = COALESCE(EXCLUDED.description, series.description),
                series_number = COALESCE(EXCLUDED.series_number, series.series_number),
                instance_count = GREATEST(series.instance_count, EXCLUDED.instance_count),
                first_received_at = LEAST(series.first_received_at, EXCLUDED.first_received_at),
                last_received_at = GREATEST(series.last_received_at, EXCLUDED.last_received_at)
            RETURNING id, (xmax = 0) AS created
            """
        ),
        {
            "uid": info.series_uid, "oid": info.orthanc_id, "study": study_id, "study_uid": info.study_uid,
            "kind": kind, "linked": linked_by, "aet": info.sender_aet, "mod": info.modality,
            "descr": info.description, "num": info.series_number, "count": info.instance_count,
            "first": info.first_received_at, "last": info.last_received_at,
        },
    ).one()
    return row.id, bool(row.created)


def mark_series_stable(conn: Connection, series_id: int, at: datetime) -> bool:
    """Record the first stability of a series; False when it was already stable."""
    return conn.execute(
        text("UPDATE series SET stable_at = :at WHERE id = :id AND stable_at IS NULL"),
        {"id": series_id, "at": at},
    ).rowcount == 1


def mark_study_stable(conn: Connection, study_id: int, at: datetime) -> bool:
    """Record stability: stable_at is set once, last_stable_at follows every stabilisation."""
    return conn.execute(
        text(
            "UPDATE studies SET stable_at = COALESCE(stable_at, :at), last_stable_at = :at, "
            "updated_at = now() WHERE id = :id RETURNING (stable_at = :at)"
        ),
        {"id": study_id, "at": at},
    ).scalar_one()


def mark_series_routed(conn: Connection, series_ids: Iterable[int], at: datetime) -> None:
    ids = list(series_ids)
    if ids:
        conn.execute(
            text("UPDATE series SET routed_at = :at, routed_instances = instance_count "
                 "WHERE id = ANY(:ids) AND routed_at IS NULL"),
            {"ids": ids, "at": at},
        )


def set_orphan(conn: Connection, study_id: int) -> None:
    conn.execute(text("UPDATE studies SET orphan_ai_result = true WHERE id = :id"), {"id": study_id})


def queue_job(
    conn: Connection,
    *,
    study_id: int,
    purpose: str,
    destination: str,
    series_ids: Sequence[int],
    payload: str,
    rule_name: str | None,
    at: datetime,
    resend: bool = False,
) -> int | None:
    """Queue one job for the series not yet sent to `destination`.

    Series already claimed by an earlier job for the same destination are dropped
    (a partial unique index enforces it, even across concurrent workers), unless
    `resend` is set. Returns the job id, or None when nothing is left to send.
    """
    if not series_ids:
        return None
    job_id = conn.execute(
        text(
            "INSERT INTO routing_jobs (study_id, purpose, destination, rule_name, payload, "
            "next_attempt_at, created_at, updated_at) "
            "VALUES (:study, :purpose, :dest, :rule, :payload, :at, :at, :at) RETURNING id"
        ),
        {"study": study_id, "purpose": purpose, "dest": destination, "rule": rule_name,
         "payload": payload, "at": at},
    ).scalar_one()
    inserted = conn.execute(
        text(
            "INSERT INTO job_series (job_id, series_id, destination, is_resend) "
            "SELECT :job, unnest(CAST(:ids AS bigint[])), :dest, :resend "
            "ON CONFLICT (series_id, destination) WHERE NOT is_resend DO NOTHING RETURNING series_id"
        ),
        {"job": job_id, "ids": list(series_ids), "dest": destination, "resend": resend},
    ).scalars().all()
    if not inserted:
        conn.execute(text("DELETE FROM routing_jobs WHERE id = :id"), {"id": job_id})
        return None
    add_event(
        conn, study_id, EventType.DELIVERY_QUEUED, at, job_id=job_id, destination=destination,
        detail={"purpose": purpose, "rule": rule_name, "series": len(inserted), "resend": resend},
    )
    announce_work(conn)
    return job_id


def job_started(conn: Connection, job_id: int, *, orthanc_job_id: str, at: datetime) -> None:
    jobs_started(conn, [job_id], orthanc_job_id=orthanc_job_id, at=at)


def jobs_started(conn: Connection, job_ids: Sequence[int], *, orthanc_job_id: str, at: datetime,
                 adopted: bool = False) -> None:
    """Record that Orthanc job `orthanc_job_id` carries these jobs: one statement per batch.

    `at` is when the store request left (the intent), which precedes Orthanc's creation
    of the job. `adopted` marks a store found in Orthanc's job list after its sender died
    before recording it; `at` is then Orthanc's creation time of that job.

    Set-based on purpose: the dispatcher records a whole batch at once, and per-job
    statements (each firing the QI dirty-marking trigger) were most of its database time.
    """
    conn.execute(
        text(
            """
            WITH started AS (
                UPDATE routing_jobs SET orthanc_job_id = :oj, started_at = COALESCE(started_at, :at),
                       attempts = attempts + 1, send_intent_at = NULL, updated_at = :at
                WHERE id = ANY(CAST(:ids AS bigint[])) RETURNING id, study_id, destination, attempts
            )
            INSERT INTO events (study_id, job_id, type, at, destination, detail)
            SELECT study_id, id, :started, :at, destination,
                   jsonb_build_object('attempt', attempts, 'orthanc_job', CAST(:oj AS text))
                   || CASE WHEN :adopted THEN jsonb_build_object('adopted', true) ELSE '{}'::jsonb END
            FROM started ORDER BY id
            """
        ),
        {"ids": list(job_ids), "oj": orthanc_job_id, "at": at, "adopted": adopted,
         "started": EventType.DELIVERY_STARTED},
    )


def job_succeeded(conn: Connection, job_id: int, *, at: datetime, instances_sent: int | None) -> None:
    jobs_succeeded(conn, [job_id], at=at, instances_sent=instances_sent)


def jobs_succeeded(conn: Connection, job_ids: Sequence[int], *, at: datetime, instances_sent: int | None) -> None:
    """Mark jobs succeeded (one statement per batch); an AI job's success is the study's `ai_sent` event.

    Idempotent: two workers can follow the same Orthanc job (one adopted it while the
    other's liveness lock was being taken again after a database restart); the second
    success records nothing, so a job never gets two `delivered` events.
    """
    study_ids = conn.execute(
        text(
            """
            WITH done AS (
                UPDATE routing_jobs SET state = :succeeded, finished_at = :at, updated_at = :at,
                       instances_sent = :n, last_error = NULL, last_error_code = NULL, claimed_by = NULL
                WHERE id = ANY(CAST(:ids AS bigint[])) AND state <> :succeeded
                RETURNING id, study_id, destination, purpose
            )
            INSERT INTO events (study_id, job_id, type, at, destination, detail)
            SELECT study_id, id, CASE WHEN purpose = :ai THEN :ai_sent ELSE :delivered END, :at, destination,
                   jsonb_build_object('instances', CAST(:n AS integer))
            FROM done ORDER BY id RETURNING study_id
            """
        ),
        {"ids": list(job_ids), "at": at, "n": instances_sent, "succeeded": JobState.SUCCEEDED, "ai": Purpose.AI,
         "ai_sent": EventType.AI_SENT, "delivered": EventType.DELIVERED},
    ).scalars().all()
    for study_id in sorted(set(study_ids)):  # one order for every writer: fewer deadlocks
        refresh_study_status(conn, study_id)


def job_failed(
    conn: Connection,
    job_id: int,
    *,
    at: datetime,
    error: str,
    error_code: int | None,
    retry_at: datetime | None,
) -> None:
    """Record a failed attempt: `failed` until `retry_at`, or `dead` when None."""
    state = JobState.FAILED if retry_at is not None else JobState.DEAD
    row = conn.execute(
        text(
            "UPDATE routing_jobs SET state = :state, last_error = :err, last_error_code = :code, "
            "next_attempt_at = COALESCE(:retry, next_attempt_at), updated_at = :at, claimed_by = NULL, "
            "orthanc_job_id = NULL, send_intent_at = NULL, "
            "finished_at = CASE WHEN :state = :dead THEN CAST(:at AS timestamptz) END "
            "WHERE id = :id RETURNING study_id, destination, attempts"
        ),
        {"id": job_id, "state": state, "err": error[:2000], "code": error_code, "retry": retry_at, "at": at,
         "dead": JobState.DEAD},
    ).one()
    add_event(
        conn, row.study_id, EventType.DELIVERY_FAILED if state == JobState.FAILED else EventType.DELIVERY_DEAD, at,
        job_id=job_id, destination=row.destination,
        detail={"error": error[:500], "code": error_code, "attempt": row.attempts,
                "retry_at": retry_at.isoformat() if retry_at else None},
    )
    refresh_study_status(conn, row.study_id)


def refresh_study_status(conn: Connection, study_id: int) -> None:
    """Recompute the study's workflow status from its required jobs, series and events.

    Resends (operator resends and re-sends of grown series: job_series.is_resend) are
    left out, as in the QI views: a resend is its own job row and events, and never
    turns a delivered study back into 'delivering' (or 'failed' when it dies).
    """
    conn.execute(
        text(
            """
            WITH j AS (
                SELECT
                    count(*) FILTER (WHERE purpose = :ai AND state = :succeeded) AS ai_ok,
                    count(*) FILTER (WHERE purpose = :ai) AS ai_jobs,
                    count(*) FILTER (WHERE state = :dead) AS dead,
                    count(*) FILTER (WHERE state = ANY(:open)) AS open,
                    count(*) FILTER (WHERE purpose = :delivery AND state = :succeeded) AS delivered,
                    count(*) AS total
                FROM routing_jobs WHERE study_id = :id AND state <> :cancelled
                  AND NOT EXISTS (SELECT 1 FROM job_series js WHERE js.job_id = routing_jobs.id AND js.is_resend)
            ), s AS (
                SELECT count(*) FILTER (WHERE kind = :ai_result) AS ai_results,
                       count(*) FILTER (WHERE routed_at IS NOT NULL) AS routed
                FROM series WHERE study_id = :id
            ), e AS (
                SELECT bool_or(type = :overdue_event) AS overdue, bool_or(type = :unrouted_event) AS unrouted
                FROM events WHERE study_id = :id
            )
            UPDATE studies SET updated_at = now(), status = CASE
                WHEN j.dead > 0 THEN :to_failed
                WHEN j.ai_jobs > 0 AND s.ai_results = 0 AND j.ai_ok > 0 AND e.overdue THEN :to_ai_overdue
                WHEN j.ai_jobs > 0 AND s.ai_results = 0 THEN :to_ai_pending
                WHEN j.open > 0 THEN :to_delivering
                WHEN j.delivered > 0 THEN :to_delivered
                WHEN j.total = 0 AND e.unrouted THEN :to_unrouted
                WHEN j.total > 0 THEN :to_ai_pending
                ELSE :to_received END
            FROM j, s, e WHERE studies.id = :id
            """
        ),
        {"id": study_id, **_STATUS_PARAMS},
    )


# The vocabulary refresh_study_status reads (jobs, series kinds, events) and writes (studies.status).
_STATUS_PARAMS: dict[str, Any] = {
    "ai": Purpose.AI, "delivery": Purpose.DELIVERY,
    "succeeded": JobState.SUCCEEDED, "dead": JobState.DEAD, "cancelled": JobState.CANCELLED,
    "open": [JobState.QUEUED, JobState.SENDING, JobState.FAILED],
    "ai_result": SeriesKind.AI_RESULT,
    "overdue_event": EventType.AI_OVERDUE, "unrouted_event": EventType.UNROUTED,
    "to_failed": StudyStatus.FAILED, "to_ai_overdue": StudyStatus.AI_OVERDUE, "to_ai_pending": StudyStatus.AI_PENDING,
    "to_delivering": StudyStatus.DELIVERING, "to_delivered": StudyStatus.DELIVERED,
    "to_unrouted": StudyStatus.UNROUTED, "to_received": StudyStatus.RECEIVED,
}


def audit(
    conn: Connection,
    *,
    actor: str,
    source: str,
    action: str,
    target: str | None,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append to the audit log (who did what, with before and after values)."""
    conn.execute(
        text(
            "INSERT INTO audit_log (actor, source, action, target, before, after) "
            "VALUES (:actor, :source, :action, :target, CAST(:before AS jsonb), CAST(:after AS jsonb))"
        ),
        {"actor": actor, "source": source, "action": action, "target": target,
         "before": None if before is None else jsonable(before),
         "after": None if after is None else jsonable(after)},
    )


# --- the send protocol's intents, and destinations on an outage hold -------------------

OUTAGE_HELD_BY = "worker"


# --- ingest, routing, worker state, rules status and operator actions ---


def refresh_series_counts(
    conn: Connection, series_id: int, *, instances: int, last_received_at: datetime | None
) -> None:
    """A known series grew in Orthanc: raise its instance count and last reception (never lower them)."""
    conn.execute(
        text(
            "UPDATE series SET instance_count = GREATEST(instance_count, :n), "
            "last_received_at = GREATEST(last_received_at, :last) WHERE id = :id"
        ),
        {"id": series_id, "n": instances, "last": last_received_at},
    )


def refresh_study_modalities(conn: Connection, study_id: int) -> None:
    """Keep studies.modalities as the sorted set of its original series' modalities."""
    conn.execute(
        text(
            "UPDATE studies SET modalities = (SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality) "
            "FROM series WHERE study_id = :id AND kind = :original AND modality IS NOT NULL) WHERE id = :id"
        ),
        {"id": study_id, "original": SeriesKind.ORIGINAL},
    )


def mark_grown_series(conn: Connection, series_orthanc_ids: Sequence[str]) -> list[tuple[int, int, int]]:
    """Routed series that now hold more instances than when routed: (series id, study id, count).

    Their routed count is raised in the same statement, so each growth is answered once.
    """
    return [
        (row.id, row.study_id, row.instance_count)
        for row in conn.execute(
            text(
                "UPDATE series SET routed_instances = instance_count WHERE orthanc_id = ANY(:ids) "
                "AND routed_at IS NOT NULL AND instance_count > routed_instances "
                "RETURNING id, study_id, instance_count"
            ),
            {"ids": list(series_orthanc_ids)},
        )
    ]


def save_worker_state(conn: Connection, name: str, value: int) -> None:
    """Store one named worker value (the /changes cursor), in the caller's transaction."""
    conn.execute(
        text(
            "INSERT INTO worker_state (name, value, updated_at) VALUES (:n, :v, now()) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        ),
        {"n": name, "v": value},
    )


@dataclass(frozen=True)
class Heartbeat:
    """What a worker publishes about itself every few seconds (worker_heartbeats)."""

    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    owns_cursor: bool
    orthanc_ok: bool | None
    cursor_lag: int | None
    info: dict[str, Any]
    lock_key: int | None


def heartbeat(conn: Connection, beat: Heartbeat, *, at: datetime) -> None:
    """Publish (or refresh) a worker's heartbeat row."""
    conn.execute(
        text(
            """
            INSERT INTO worker_heartbeats (worker_id, hostname, pid, started_at, heartbeat_at,
                                           owns_cursor, orthanc_ok, cursor_lag, info, lock_key)
            VALUES (:id, :host, :pid, :started, :now, :owns, :ook, :lag, CAST(:info AS jsonb), :key)
            ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at,
                lock_key = EXCLUDED.lock_key,
                owns_cursor = EXCLUDED.owns_cursor, orthanc_ok = EXCLUDED.orthanc_ok,
                cursor_lag = EXCLUDED.cursor_lag, info = EXCLUDED.info
            """
        ),
        {"id": beat.worker_id, "host": beat.hostname, "pid": beat.pid, "started": beat.started_at, "now": at,
         "owns": beat.owns_cursor, "ook": beat.orthanc_ok, "lag": beat.cursor_lag, "info": jsonable(beat.info),
         "key": beat.lock_key},
    )


def worker_stopped(conn: Connection, worker_id: str) -> None:
    """A worker shut down cleanly: remove its heartbeat so it no longer counts as alive."""
    conn.execute(text("DELETE FROM worker_heartbeats WHERE worker_id = :id"), {"id": worker_id})


def _config_row(conn: Connection, name: str) -> None:
    conn.execute(text("INSERT INTO config_status (name) VALUES (:name) ON CONFLICT DO NOTHING"), {"name": name})


def config_loaded(conn: Connection, name: str, *, at: datetime, checksum: str, content: Any) -> None:
    """A configuration file (routing.yml) was loaded: record it as the last good one, clearing any error."""
    _config_row(conn, name)
    conn.execute(
        text(
            "UPDATE config_status SET loaded_at = :now, checksum = :sum, error = NULL, error_at = NULL, "
            "error_checksum = NULL, content = CAST(:content AS jsonb) WHERE name = :name"
        ),
        {"now": at, "sum": checksum, "content": jsonable(content), "name": name},
    )


def config_refused(conn: Connection, name: str, *, at: datetime, error: str, key: str) -> bool:
    """A configuration file was refused; False when this very content's refusal is recorded already."""
    _config_row(conn, name)
    return conn.execute(
        text("UPDATE config_status SET error = :err, error_at = :now, error_checksum = :key "
             "WHERE name = :name AND error_checksum IS DISTINCT FROM :key RETURNING name"),
        {"err": error, "now": at, "key": key, "name": name},
    ).first() is not None


def requeue_job(conn: Connection, job_id: int, *, at: datetime) -> None:
    """An operator retries a job: back to queued now, with fresh attempts."""
    conn.execute(
        text(
            "UPDATE routing_jobs SET state = :queued, attempts = 0, next_attempt_at = :now, "
            "finished_at = NULL, updated_at = :now WHERE id = :id"
        ),
        {"id": job_id, "now": at, "queued": JobState.QUEUED},
    )
    announce_work(conn)


def cancel_job(conn: Connection, job_id: int, *, at: datetime) -> None:
    """An operator cancels a waiting or dead job."""
    conn.execute(
        text("UPDATE routing_jobs SET state = :cancelled, finished_at = :now, updated_at = :now WHERE id = :id"),
        {"id": job_id, "now": at, "cancelled": JobState.CANCELLED},
    )


def hold_destination(conn: Connection, destination: str, *, actor: str, reason: str | None, at: datetime) -> bool:
    """An operator holds a destination, taking over an automatic outage hold; False if an operator holds it already."""
    return conn.execute(
        text("INSERT INTO destination_holds (destination, held_at, held_by, reason, kind) "
             "VALUES (:d, :at, :a, :r, :kind) "
             "ON CONFLICT (destination) DO UPDATE SET kind = EXCLUDED.kind, held_by = EXCLUDED.held_by, "
             "reason = EXCLUDED.reason, held_at = EXCLUDED.held_at, next_probe_at = NULL "
             "WHERE destination_holds.kind <> EXCLUDED.kind RETURNING destination"),
        {"d": destination, "a": actor, "r": reason, "kind": HoldKind.OPERATOR, "at": at},
    ).first() is not None


def release_destination(conn: Connection, destination: str) -> None:
    """Lift a destination's hold, whoever put it there."""
    conn.execute(text("DELETE FROM destination_holds WHERE destination = :d"), {"d": destination})
    announce_work(conn)


# --- set-based loading of finished history ---


def clear_history(conn: Connection) -> None:
    """Empty every recorded study, job and event and the QI caches (a benchmark database's --reset)."""
    conn.exec_driver_sql("TRUNCATE studies, series, events, routing_jobs, job_series, qi_dirty, "
                         "qi_study_fact, qi_delivery_fact RESTART IDENTITY")


# Loaded in this order, so each table's foreign keys point at rows already there.
IMPORTED_TABLES = ("studies", "series", "routing_jobs", "job_series", "events")
TRIGGER_TABLES = ("studies", "series", "routing_jobs")  # the QI caches' dirty-marking triggers
SERIAL_TABLES = ("studies", "series", "routing_jobs")


@contextmanager
def bulk_import(conn: Connection) -> Iterator[None]:
    """Load finished history set-based: the caller fills staging tables, this moves them in.

    For what the pipeline cannot record fast enough (the QI benchmarks' million
    studies, testkit/history.py). Inside the block the caller writes only to
    `import_<table>` (unlogged tables shaped LIKE each of IMPORTED_TABLES, empty at the
    start) with INSERT ... SELECT. On exit the rows move into the core tables in one
    pass: the QI triggers are off and each foreign key is checked once at the end
    instead of once per row; sequences follow the imported ids; the QI caches are
    rebuilt. Runs in the caller's transaction, which must not be in autocommit.
    """
    for table in IMPORTED_TABLES:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS import_{table}")
        conn.exec_driver_sql(f"CREATE UNLOGGED TABLE import_{table} (LIKE {table} INCLUDING DEFAULTS)")
    yield
    for table in TRIGGER_TABLES:
        conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    foreign_keys = conn.execute(
        text("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
             "WHERE contype = 'f' AND conrelid::regclass::text = ANY(:tables)"),
        {"tables": list(IMPORTED_TABLES)},
    ).all()
    for table, name, _ in foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table in IMPORTED_TABLES:
        conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM import_{table}")  # noqa: S608 - constant names
        conn.exec_driver_sql(f"DROP TABLE import_{table}")
    for table, name, definition in foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for table in TRIGGER_TABLES:
        conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    for table in SERIAL_TABLES:
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
        )
    conn.exec_driver_sql("SELECT qi_rebuild()")


def jobs_intended(conn: Connection, job_ids: Sequence[int], *, at: datetime) -> None:
    """Record, before the store request leaves, that these jobs are about to be sent together.

    Committed before the POST: a worker that adopts them without an Orthanc job id then
    knows a store may be under way and looks for it in Orthanc before sending again.
    All jobs of one batch share the same `at`, which is how an adopter regroups them.
    """
    conn.execute(
        text("UPDATE routing_jobs SET send_intent_at = :at, updated_at = :at WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": list(job_ids), "at": at},
    )


def jobs_waiting(
    conn: Connection, job_ids: Sequence[int], *, at: datetime, error: str, code: int | None,
    uncount: bool, retry_at: datetime | None = None, keep_intent: bool = False,
) -> None:
    """Put jobs back to wait without spending an attempt, with a `delivery_failed` event.

    For failures that say nothing about the destination's answer to our data: the
    destination is on an outage hold (it does not answer C-ECHO), or Orthanc itself is
    unreachable. `uncount` takes back the attempt `jobs_started` counted. With
    `keep_intent` the send intent stays: the store request may have reached Orthanc.
    """
    rows = conn.execute(
        text(
            """
            UPDATE routing_jobs SET state = CASE WHEN CAST(:retry AS timestamptz) IS NULL THEN :queued ELSE :failed END,
                   attempts = GREATEST(0, attempts - :dec), orthanc_job_id = NULL,
                   send_intent_at = CASE WHEN :keep THEN send_intent_at END,
                   claimed_by = NULL, last_error = :err, last_error_code = :code,
                   next_attempt_at = COALESCE(CAST(:retry AS timestamptz), :at), updated_at = :at
            WHERE id = ANY(CAST(:ids AS bigint[])) RETURNING id, study_id, destination, attempts
            """
        ),
        {"ids": list(job_ids), "dec": 1 if uncount else 0, "keep": keep_intent, "err": error[:2000],
         "code": code, "retry": retry_at, "at": at, "queued": JobState.QUEUED, "failed": JobState.FAILED},
    ).all()
    for row in sorted(rows):
        add_event(conn, row.study_id, EventType.DELIVERY_FAILED, at, job_id=row.id, destination=row.destination,
                  detail={"error": error[:500], "code": code, "attempt": row.attempts, "attempt_counted": False,
                          "retry_at": retry_at.isoformat() if retry_at else None, "waiting": True})
    for study_id in sorted({row.study_id for row in rows}):
        refresh_study_status(conn, study_id)


def outage_started(conn: Connection, destination: str, *, at: datetime, error: str, next_probe_at: datetime,
                   reason: str = "not answering C-ECHO") -> bool:
    """Put `destination` on an automatic outage hold; False when it was already held (any kind)."""
    held = conn.execute(
        text(
            "INSERT INTO destination_holds (destination, held_at, held_by, reason, kind, next_probe_at, last_error) "
            "VALUES (:d, :at, :by, :reason, :outage, :probe, :err) ON CONFLICT DO NOTHING"
        ),
        {"d": destination, "at": at, "by": OUTAGE_HELD_BY, "reason": reason, "probe": next_probe_at,
         "err": error[:2000], "outage": HoldKind.OUTAGE},
    ).rowcount == 1
    if held:
        conn.execute(
            text(
                "INSERT INTO destination_outages (destination, started_at, first_error, last_error) "
                "VALUES (:d, :at, :err, :err) ON CONFLICT (destination) WHERE ended_at IS NULL DO NOTHING"
            ),
            {"d": destination, "at": at, "err": error[:2000]},
        )
    return held


def lease_outage_probe(conn: Connection, *, now: datetime, lease_until: datetime) -> tuple[str, int] | None:
    """Take one due outage probe: (destination, failed probes so far), or None.

    Moving `next_probe_at` to `lease_until` under SKIP LOCKED is the lease: no other
    worker probes that destination before this probe is recorded or the lease ends.
    """
    row = conn.execute(
        text(
            """
            UPDATE destination_holds SET next_probe_at = :lease
            WHERE destination = (
                SELECT destination FROM destination_holds
                WHERE kind = :outage AND (next_probe_at IS NULL OR next_probe_at <= :now)
                ORDER BY next_probe_at NULLS FIRST LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING destination, probe_failures
            """
        ),
        {"now": now, "lease": lease_until, "outage": HoldKind.OUTAGE},
    ).first()
    return (row.destination, row.probe_failures) if row else None


def outage_probe_failed(conn: Connection, destination: str, *, at: datetime, error: str,
                        next_probe_at: datetime) -> None:
    conn.execute(
        text(
            "UPDATE destination_holds SET probe_failures = probe_failures + 1, last_probe_at = :at, "
            "next_probe_at = :probe, last_error = :err WHERE destination = :d AND kind = :outage"
        ),
        {"d": destination, "at": at, "probe": next_probe_at, "err": error[:2000], "outage": HoldKind.OUTAGE},
    )
    conn.execute(
        text("UPDATE destination_outages SET probes = probes + 1, last_error = :err "
             "WHERE destination = :d AND ended_at IS NULL"),
        {"d": destination, "err": error[:2000]},
    )


def outage_ended(conn: Connection, destination: str, *, at: datetime) -> bool:
    """The destination answered C-ECHO: lift its outage hold; False if it was no longer an outage hold."""
    lifted = conn.execute(
        text("DELETE FROM destination_holds WHERE destination = :d AND kind = :outage"),
        {"d": destination, "outage": HoldKind.OUTAGE},
    ).rowcount == 1
    conn.execute(
        text("UPDATE destination_outages SET ended_at = :at, probes = probes + 1 "
             "WHERE destination = :d AND ended_at IS NULL"),
        {"d": destination, "at": at},
    )
    if lifted:
        announce_work(conn)
    return lifted


def close_outages_taken_over(conn: Connection, at: datetime) -> None:
    """End outage records whose automatic hold an operator released or turned into their own hold."""
    conn.execute(
        text(
            "UPDATE destination_outages o SET ended_at = :at WHERE ended_at IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM destination_holds h WHERE h.destination = o.destination AND h.kind = :outage)"
        ),
        {"at": at, "outage": HoldKind.OUTAGE},
    )


# --- dispatcher: claims, releases and Orthanc job outcomes ---


def _constant(name: str, value: str) -> BindParameter[str]:
    """`value` written into the statement's text, where a bound parameter would be.

    The claim query keeps its job states literal, as it always had them: the planner can
    then use routing_jobs_due_idx (partial, on state IN ('queued', 'failed')) even once
    psycopg has prepared the statement and PostgreSQL plans it generically.
    """
    return bindparam(name, value, type_=String, literal_execute=True)


_CLAIM = text(
    """
    WITH live AS (
        SELECT h.worker_id FROM worker_heartbeats h
        JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = CAST(:ns AS oid) AND l.objid = CAST(h.lock_key AS oid)
        WHERE h.heartbeat_at > :now - make_interval(secs => :stale)
    ), busy AS (
        SELECT destination, count(*) AS n FROM routing_jobs
        WHERE state = :sending AND claimed_by IN (SELECT worker_id FROM live)
          AND (claimed_by <> :w OR id = ANY(CAST(:mine AS bigint[])))
        GROUP BY destination
    ), locked AS (
        SELECT j.id, j.destination, j.next_attempt_at FROM routing_jobs j
        WHERE ((j.state IN (:queued, :failed) AND j.next_attempt_at <= :now)
           OR (j.state = :sending AND (j.claimed_by IS NULL OR j.claimed_by = :w
               OR j.claimed_by NOT IN (SELECT worker_id FROM live))))
          AND j.id <> ALL(CAST(:mine AS bigint[]))
          AND (j.orthanc_job_id IS NOT NULL OR j.send_intent_at IS NOT NULL OR NOT EXISTS
               (SELECT 1 FROM destination_holds h WHERE h.destination = j.destination))
        ORDER BY j.next_attempt_at, j.id LIMIT 2000
        FOR UPDATE SKIP LOCKED
    ), ranked AS (
        SELECT id, destination, next_attempt_at,
               row_number() OVER (PARTITION BY destination ORDER BY next_attempt_at, id) AS rn
        FROM locked
    )
    SELECT ranked.id FROM ranked LEFT JOIN busy USING (destination)
    WHERE ranked.rn + COALESCE(busy.n, 0) <= :per_dest
    ORDER BY ranked.next_attempt_at, ranked.id LIMIT :limit
    """
).bindparams(_constant("queued", JobState.QUEUED), _constant("failed", JobState.FAILED),
             _constant("sending", JobState.SENDING))


def claim_jobs(
    conn: Connection, *, worker_id: str, now: datetime, limit: int, in_flight: Sequence[int], per_destination: int,
    claim_lock_key: int, liveness_ns: int, stale_s: float,
) -> list[Row]:
    """Claim up to `limit` jobs for `worker_id`: due ones, and `sending` ones nobody alive follows.

    Serialised by the transaction-level advisory lock `claim_lock_key`. A worker is
    alive while its liveness lock (`liveness_ns`, worker_heartbeats.lock_key) is
    granted in pg_locks and its heartbeat is younger than `stale_s`. `in_flight` are
    this worker's jobs being sent right now (its other `sending` jobs are strays to
    adopt); at most `per_destination` jobs per destination are in flight across the
    live workers, and a held destination's jobs are claimed only when Orthanc already
    has them (a job id or an intent). Returns (id, study_id, destination, purpose,
    orthanc_job_id, attempts, send_intent_at) rows, now `sending` and claimed.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": claim_lock_key})
    ids = conn.execute(
        _CLAIM,
        {"now": now, "stale": stale_s, "limit": limit, "mine": list(in_flight), "w": worker_id,
         "ns": liveness_ns, "per_dest": per_destination},
    ).scalars().all()
    if not ids:
        return []
    return list(conn.execute(
        text(
            "UPDATE routing_jobs SET state = :sending, claimed_by = :w, updated_at = :now "
            "WHERE id = ANY(:ids) "
            "RETURNING id, study_id, destination, purpose, orthanc_job_id, attempts, send_intent_at"
        ),
        {"w": worker_id, "now": now, "ids": list(ids), "sending": JobState.SENDING},
    ).all())


def jobs_released(conn: Connection, job_ids: Sequence[int], *, worker_id: str) -> None:
    """Hand `worker_id`'s unfinished `sending` jobs back, unclaimed; they keep their job id or intent."""
    conn.execute(
        text("UPDATE routing_jobs SET claimed_by = NULL, updated_at = now() "
             "WHERE id = ANY(:ids) AND state = :sending AND claimed_by = :w"),
        {"ids": list(job_ids), "w": worker_id, "sending": JobState.SENDING},
    )


def store_adopted(
    conn: Connection, job_ids: Sequence[int], *, destination: str, intent: datetime | None, orthanc_job_id: str,
    at: datetime,
) -> None:
    """Record a store found in Orthanc on every job of the dead sender's batch, claimed here or not.

    The batch is the `sending` jobs to `destination` sharing the send intent `intent`
    that have no job id yet, plus `job_ids`. A claim may have split that batch; its
    other jobs then follow this store when adopted, instead of finding no job id and
    sending again. `at` is Orthanc's creation time of the store.
    """
    mates = conn.execute(
        text("SELECT id FROM routing_jobs WHERE destination = :d AND send_intent_at = :intent "
             "AND orthanc_job_id IS NULL AND state = :sending ORDER BY id"),
        {"d": destination, "intent": intent, "sending": JobState.SENDING},
    ).scalars().all()
    jobs_started(conn, sorted(set(mates) | set(job_ids)), orthanc_job_id=orthanc_job_id, at=at, adopted=True)


def jobs_failed(
    conn: Connection, job_ids: Sequence[int], *, at: datetime, error: str, error_code: int | None,
    count_attempt: bool, retry_at: Callable[[int], datetime | None],
) -> list[int]:
    """Record a counted failed attempt for each job; returns the jobs that are now `dead`.

    `count_attempt` adds the attempt here (Orthanc refused the store before a job
    started; otherwise `jobs_started` counted it). `retry_at(attempts)` is when a job
    with that many attempts tries again, or None when it has none left.
    """
    dead = []
    for job_id in job_ids:
        attempts = conn.execute(
            text("UPDATE routing_jobs SET attempts = attempts + :inc WHERE id = :id RETURNING attempts"),
            {"id": job_id, "inc": 1 if count_attempt else 0},
        ).scalar_one()
        when = retry_at(attempts)
        if when is None:
            dead.append(job_id)
        job_failed(conn, job_id, at=at, error=error, error_code=error_code, retry_at=when)
    return dead


# --- incidents and alerts ---
# The worker's alerter (worker/alerter.py) and the test alert (core/alerts.py) write these.
# One open incident per (kind, key) (the partial unique index incidents_open_idx): a burst
# of dead jobs for one destination updates the open incident instead of opening another.


@dataclass(frozen=True)
class IncidentSeen:
    """The open incident a condition was folded into; `opened` when this call opened it."""

    id: int
    opened: bool
    opened_at: datetime
    last_notified_at: datetime | None


def incident_seen(
    conn: Connection, kind: str, key: str, *, at: datetime, summary: str, detail: dict[str, Any], occurrences: int,
) -> IncidentSeen:
    """Open an incident for (kind, key), or refresh the open one (summary, detail, occurrences, last seen).

    `occurrences` is how many things the incident covers at this look (dead jobs,
    overdue studies, refused series; 1 for a state such as low disk).
    """
    row = conn.execute(
        text(
            """
            INSERT INTO incidents (kind, key, opened_at, last_seen_at, occurrences, summary, detail)
            VALUES (:kind, :key, :at, :at, :n, :summary, CAST(:detail AS jsonb))
            ON CONFLICT (kind, key) WHERE resolved_at IS NULL DO UPDATE SET
                last_seen_at = EXCLUDED.last_seen_at, occurrences = EXCLUDED.occurrences,
                summary = EXCLUDED.summary, detail = EXCLUDED.detail
            RETURNING id, (xmax = 0) AS opened, opened_at, last_notified_at
            """
        ),
        {"kind": kind, "key": key, "at": at, "n": occurrences, "summary": summary[:1000], "detail": jsonable(detail)},
    ).one()
    return IncidentSeen(row.id, bool(row.opened), row.opened_at, row.last_notified_at)


def incident_resolved(conn: Connection, incident_id: int, *, at: datetime) -> bool:
    """The condition is gone: resolve the incident; False when it was resolved already."""
    return conn.execute(
        text("UPDATE incidents SET resolved_at = :at WHERE id = :id AND resolved_at IS NULL"),
        {"id": incident_id, "at": at},
    ).rowcount == 1


def incident_notified(conn: Connection, incident_id: int, *, at: datetime) -> None:
    """A message about the incident went out (or was tried on every channel) at `at`."""
    conn.execute(text("UPDATE incidents SET last_notified_at = :at WHERE id = :id"), {"id": incident_id, "at": at})


def incident_recorded(
    conn: Connection, kind: str, key: str, *, opened_at: datetime, last_seen_at: datetime,
    resolved_at: datetime | None, summary: str, detail: dict[str, Any], last_notified_at: datetime | None,
) -> int:
    """Record an incident the alerter kept in memory (the database itself was unreachable); returns its id."""
    return int(conn.execute(
        text(
            """
            INSERT INTO incidents (kind, key, opened_at, last_seen_at, resolved_at, summary, detail, last_notified_at)
            VALUES (:kind, :key, :opened, :seen, :resolved, :summary, CAST(:detail AS jsonb), :notified)
            RETURNING id
            """
        ),
        {"kind": kind, "key": key, "opened": opened_at, "seen": last_seen_at, "resolved": resolved_at,
         "summary": summary[:1000], "detail": jsonable(detail), "notified": last_notified_at},
    ).scalar_one())


def alert_delivered(
    conn: Connection, incident_id: int, *, channel: str, message: str, attempt: int, at: datetime, ok: bool,
    error: str | None,
) -> None:
    """One attempt to send one message about an incident on one channel, and how it went."""
    conn.execute(
        text(
            "INSERT INTO alert_deliveries (incident_id, channel, message, attempt, at, ok, error) "
            "VALUES (:id, :channel, :message, :attempt, :at, :ok, :error)"
        ),
        {"id": incident_id, "channel": channel, "message": message, "attempt": attempt, "at": at, "ok": ok,
         "error": None if error is None else error[:1000]},
    )


# --- retention (core/retention.py) ---
# A purged study keeps every row (series, jobs, events): only purged_at says Orthanc no
# longer holds it, so the QI figures survive the deletion.

RETENTION_STATUS = "last"  # the one retention_status row: the last retention run


def study_purged(conn: Connection, study_id: int, *, at: datetime, actor: str, source: str,
                 detail: dict[str, Any]) -> bool:
    """Retention deleted the study from Orthanc: mark it, add the timeline event and the audit line.

    False (and nothing written) when it was marked already. `detail` must hold no patient data.
    """
    if conn.execute(
        text("UPDATE studies SET purged_at = :at, updated_at = now() WHERE id = :id AND purged_at IS NULL"),
        {"id": study_id, "at": at},
    ).rowcount != 1:
        return False
    add_event(conn, study_id, EventType.PURGED, at, detail={"actor": actor, **detail})
    audit(conn, actor=actor, source=source, action="study.purge", target=f"study:{study_id}",
          before={"in_orthanc": True}, after={"in_orthanc": False, **detail})
    return True


def study_received_again(conn: Connection, study_id: int) -> None:
    """Orthanc received part of a study retention purged: it holds the study again (worker/ingest.py)."""
    conn.execute(text("UPDATE studies SET purged_at = NULL WHERE id = :id AND purged_at IS NOT NULL"),
                 {"id": study_id})


def retention_ran(
    conn: Connection, *, at: datetime, actor: str, source: str, purged: int, failed: int, kept: int,
    oldest_kept: dict[str, Any] | None, detail: dict[str, Any],
) -> None:
    """Record the last retention run (the Overview's and /metrics' retention state)."""
    conn.execute(
        text(
            """
            INSERT INTO retention_status (name, ran_at, actor, source, purged, failed, kept, oldest_kept, detail)
            VALUES (:name, :at, :actor, :source, :purged, :failed, :kept, CAST(:oldest AS jsonb), CAST(:detail AS jsonb))
            ON CONFLICT (name) DO UPDATE SET ran_at = EXCLUDED.ran_at, actor = EXCLUDED.actor,
                source = EXCLUDED.source, purged = EXCLUDED.purged, failed = EXCLUDED.failed, kept = EXCLUDED.kept,
                oldest_kept = EXCLUDED.oldest_kept, detail = EXCLUDED.detail
            """
        ),
        {"name": RETENTION_STATUS, "at": at, "actor": actor, "source": source, "purged": purged, "failed": failed,
         "kept": kept, "oldest": None if oldest_kept is None else jsonable(oldest_kept), "detail": jsonable(detail)},
    )
