"""Read queries for the operations app: health, backlog, studies, jobs, destinations, audit.

Every query is parameterised and written against an index of the core schema, so a
page stays fast at a million studies: lists use keyset pagination ("the next N rows
after this cursor"), and no query counts every study on a rerun. Patient names and
ids are only selected when the caller says the user may see them, so masked PHI is
never even fetched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, String, bindparam, text

from core.qi import DRILL_SQL, Drill
from core.states import EventType, HoldKind, JobState, Purpose, SeriesKind, StudyStatus

# Every status and state, in the order pages and the CLI list them.
STUDY_STATUSES: tuple[StudyStatus, ...] = (
    StudyStatus.RECEIVED, StudyStatus.AI_PENDING, StudyStatus.AI_OVERDUE, StudyStatus.DELIVERING,
    StudyStatus.DELIVERED, StudyStatus.FAILED, StudyStatus.UNROUTED,
)
JOB_STATES: tuple[JobState, ...] = (
    JobState.QUEUED, JobState.SENDING, JobState.FAILED, JobState.DEAD, JobState.CANCELLED, JobState.SUCCEEDED,
)
# Waiting for a send or being sent: what a destination hold makes pile up.
OPEN_JOB_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.SENDING, JobState.FAILED)
# The job backlog of the Overview and `make status`: the open states and the dead jobs.
BACKLOG_STATES: tuple[JobState, ...] = (*OPEN_JOB_STATES, JobState.DEAD)
# The states the dispatcher picks jobs up from once they are due.
DUE_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.FAILED)
# Events of one send attempt's outcome, by success and failure.
SEND_OK_EVENTS: tuple[EventType, ...] = (EventType.AI_SENT, EventType.DELIVERED)
SEND_FAILED_EVENTS: tuple[EventType, ...] = (EventType.DELIVERY_FAILED, EventType.DELIVERY_DEAD)
MASK = "•••"

# A page query that runs longer than this is cancelled rather than freezing the UI.
STATEMENT_TIMEOUT_MS = 8000


def limit_statement_time(conn: Connection, ms: int = STATEMENT_TIMEOUT_MS) -> None:
    """Bound every statement of the current transaction (SET LOCAL ends with it)."""
    conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(ms))})


def _rows(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(sql), params or {}).mappings().all()]


# --- overview ---------------------------------------------------------------------------


def database_info(conn: Connection) -> dict[str, Any]:
    """Server version and current time: proves a round trip to PostgreSQL works."""
    row = conn.execute(text("SELECT current_setting('server_version') AS version, now() AS now")).one()
    return {"version": row.version, "now": row.now}


def worker_heartbeats(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT worker_id, hostname, pid, started_at, heartbeat_at, owns_cursor, orthanc_ok, cursor_lag, "
        "info, EXTRACT(EPOCH FROM now() - heartbeat_at)::float AS age_s "
        "FROM worker_heartbeats ORDER BY owns_cursor DESC, heartbeat_at DESC",
    )


def job_backlog(conn: Connection) -> dict[str, Any]:
    """Jobs per open state, dead jobs waiting for an operator, and the oldest queued job's age."""
    counts = {
        r["state"]: r["n"]
        for r in _rows(
            conn,
            "SELECT state, count(*) AS n FROM routing_jobs WHERE state = ANY(:states) GROUP BY state",
            {"states": list(BACKLOG_STATES)},
        )
    }
    oldest = conn.execute(
        text("SELECT min(created_at) FROM routing_jobs WHERE state = :queued"), {"queued": JobState.QUEUED}
    ).scalar_one()
    # States written into the text (literal_execute), so routing_jobs_due_idx, partial on
    # these states, stays usable once PostgreSQL plans the prepared statement generically.
    due = conn.execute(
        text("SELECT count(*) FROM routing_jobs WHERE state IN (:queued, :failed) AND next_attempt_at <= now()")
        .bindparams(bindparam("queued", JobState.QUEUED, type_=String, literal_execute=True),
                    bindparam("failed", JobState.FAILED, type_=String, literal_execute=True))
    ).scalar_one()
    return {
        **{state: counts.get(state, 0) for state in BACKLOG_STATES},
        "due_now": due, "oldest_queued_at": oldest,
    }


def day_counts(conn: Connection, since: datetime) -> dict[str, int]:
    """Studies received, sent to the AI, with AI results back, and with a delivery since `since`."""
    row = conn.execute(
        text(
            """
            SELECT
              (SELECT count(*) FROM studies
                WHERE first_received_at >= :since AND NOT orphan_ai_result) AS received,
              (SELECT count(DISTINCT study_id) FROM events WHERE type = :ai_sent AND at >= :since) AS ai_sent,
              (SELECT count(DISTINCT study_id) FROM events
                WHERE type = :ai_result_received AND at >= :since) AS ai_results,
              (SELECT count(DISTINCT study_id) FROM events WHERE type = :delivered AND at >= :since) AS delivered
            """
        ),
        {"since": since, "ai_sent": EventType.AI_SENT, "ai_result_received": EventType.AI_RESULT_RECEIVED,
         "delivered": EventType.DELIVERED},
    ).one()
    return dict(row._mapping)


def failure_counts(conn: Connection, since: datetime) -> dict[str, int]:
    """Failed attempts and jobs gone dead since `since` (and the studies they belong to), and
    AI-overdue and failed studies now."""
    row = conn.execute(
        text(
            """
            SELECT
              (SELECT count(*) FROM events WHERE type = :delivery_failed AND at >= :since) AS failed_attempts,
              (SELECT count(*) FROM events WHERE type = :delivery_dead AND at >= :since) AS dead_jobs,
              (SELECT count(DISTINCT study_id) FROM events
                WHERE type = :delivery_failed AND at >= :since) AS failed_attempt_studies,
              (SELECT count(DISTINCT study_id) FROM events
                WHERE type = :delivery_dead AND at >= :since) AS dead_job_studies,
              (SELECT count(*) FROM studies WHERE status = :ai_overdue) AS ai_overdue,
              (SELECT count(*) FROM studies WHERE status = :failed) AS failed_studies
            """
        ),
        {"since": since, "delivery_failed": EventType.DELIVERY_FAILED, "delivery_dead": EventType.DELIVERY_DEAD,
         "ai_overdue": StudyStatus.AI_OVERDUE, "failed": StudyStatus.FAILED},
    ).one()
    return dict(row._mapping)


# --- studies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFilter:
    """Search criteria of the Studies page; None means "any"."""

    received_from: datetime | None = None  # inclusive
    received_to: datetime | None = None  # exclusive
    accession: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    source_aet: str | None = None
    status: str | None = None
    destination: str | None = None
    # issue 16, drill-down: the studies behind a number of the Overview or a QI page
    event: str | None = None  # with an event of this type at or after event_since (Overview's "today")
    event_since: datetime | None = None
    exclude_orphans: bool = False  # orphan AI results are not studies of the Overview's counts
    drill: Drill | None = None  # a QI number (core.qi.Drill), in the zone of `zone`
    zone: str = "UTC"


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the (first_received_at, id) of the last row already shown."""

    at: datetime
    id: int


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_cursor: Cursor | None
    extra: dict[str, Any] = field(default_factory=dict)


def _study_where(flt: StudyFilter, cursor: Cursor | None) -> tuple[list[str], dict[str, Any]]:
    where = ["s.first_received_at IS NOT NULL"]
    params: dict[str, Any] = {}
    if cursor is not None:
        where.append("(s.first_received_at, s.id) < (:c_at, :c_id)")
        params.update(c_at=cursor.at, c_id=cursor.id)
    if flt.received_from is not None:
        where.append("s.first_received_at >= :r_from")
        params["r_from"] = flt.received_from
    if flt.received_to is not None:
        where.append("s.first_received_at < :r_to")
        params["r_to"] = flt.received_to
    if flt.accession:
        where.append("s.accession_number = :acc")
        params["acc"] = flt.accession
    if flt.patient_id:
        where.append("s.patient_id = :pid")
        params["pid"] = flt.patient_id
    if flt.source_aet:
        where.append("s.source_aet = :aet")
        params["aet"] = flt.source_aet
    if flt.status:
        where.append("s.status = :status")
        params["status"] = flt.status
    if flt.modality:
        where.append(
            "EXISTS (SELECT 1 FROM series m WHERE m.study_id = s.id AND m.modality = :mod)"
        )
        params["mod"] = flt.modality
    if flt.destination:
        where.append(
            "EXISTS (SELECT 1 FROM routing_jobs d WHERE d.study_id = s.id AND d.destination = :dest)"
        )
        params["dest"] = flt.destination
    if flt.event:
        where.append("EXISTS (SELECT 1 FROM events ev WHERE ev.study_id = s.id AND ev.type = :ev_type "
                     "AND ev.at >= :ev_since)")
        params.update(ev_type=flt.event, ev_since=flt.event_since or datetime.min.replace(tzinfo=UTC))
    if flt.exclude_orphans:
        where.append("NOT s.orphan_ai_result")
    if flt.drill is not None:
        where.append(f"s.id IN ({DRILL_SQL})")
        params.update(flt.drill.params(ZoneInfo(flt.zone)))
    return where, params


def count_studies(conn: Connection, flt: StudyFilter) -> int:
    """How many studies a drill-down link lists (the Studies page shows it beside the number
    it came from). The page counts only what a link names, never the unfiltered table."""
    where, params = _study_where(flt, None)
    return int(conn.execute(text(f"SELECT count(*) FROM studies s WHERE {' AND '.join(where)}"),  # noqa: S608
                            params).scalar_one())


def search_studies(
    conn: Connection, flt: StudyFilter, *, cursor: Cursor | None = None, limit: int = 50, show_phi: bool = False
) -> Page:
    """One page of studies, newest arrival first, after `cursor`.

    Ordered by (first_received_at, id) descending, which studies_first_received_idx
    serves directly; one extra row tells whether a next page exists.
    """
    where, params = _study_where(flt, cursor)
    phi = "s.patient_name, s.patient_id" if show_phi else "NULL AS patient_name, NULL AS patient_id"
    rows = _rows(
        conn,
        # Only constant fragments are interpolated; every value is a bind parameter.
        f"""
        SELECT s.id, s.study_uid, s.first_received_at, s.accession_number, {phi},
               COALESCE(s.modalities, ser.modalities) AS modalities, s.description, s.source_aet,
               s.status, s.purged_at, ser.series, jobs.destinations
        FROM studies s
        LEFT JOIN LATERAL (
            SELECT count(*) AS series,
                   string_agg(DISTINCT modality, '\\' ORDER BY modality) FILTER (WHERE kind = :original)
                       AS modalities
            FROM series WHERE study_id = s.id
        ) ser ON true
        LEFT JOIN LATERAL (
            SELECT string_agg(DISTINCT destination, ', ' ORDER BY destination) AS destinations
            FROM routing_jobs WHERE study_id = s.id
        ) jobs ON true
        WHERE {' AND '.join(where)}
        ORDER BY s.first_received_at DESC, s.id DESC
        LIMIT :lim
        """,  # noqa: S608
        {**params, "lim": limit + 1, "original": SeriesKind.ORIGINAL},
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = Cursor(rows[-1]["first_received_at"], rows[-1]["id"])
    if not show_phi:
        for row in rows:
            row["patient_name"] = row["patient_id"] = MASK
    return Page(rows, next_cursor)


def studies_without_arrival(conn: Connection) -> int:
    """Studies with no arrival time yet (left out of the arrival-ordered list); indexed."""
    return conn.execute(text("SELECT count(*) FROM studies WHERE first_received_at IS NULL")).scalar_one()


def recent_destinations(conn: Connection, since: datetime) -> list[str]:
    """Destinations that had a job queued since `since` (served by events_type_at_idx)."""
    return list(
        conn.execute(
            text(
                "SELECT DISTINCT destination FROM events WHERE type = :queued AND at >= :since "
                "AND destination IS NOT NULL ORDER BY destination"
            ),
            {"since": since, "queued": EventType.DELIVERY_QUEUED},
        ).scalars()
    )


# --- study detail -----------------------------------------------------------------------


def study_number(key: str) -> int | None:
    """The study id typed as `key`, if it is one: ASCII digits that fit a bigint.

    str.isdigit() alone is not enough: it accepts '²' and other digits int() refuses.
    """
    key = key.strip()
    return int(key) if key.isascii() and key.isdigit() and len(key) < 19 else None


def find_study(conn: Connection, key: str) -> list[int]:
    """Study ids matching a database id, a StudyInstanceUID, an Orthanc id or an accession."""
    key = key.strip()
    if not key:
        return []
    ids: list[int] = []
    number = study_number(key)
    if number is not None:
        ids += conn.execute(text("SELECT id FROM studies WHERE id = :id"), {"id": number}).scalars().all()
    ids += conn.execute(
        text(
            "SELECT id FROM studies WHERE study_uid = :k OR orthanc_id = :k "
            "UNION SELECT id FROM studies WHERE accession_number = :k ORDER BY id DESC LIMIT 20"
        ),
        {"k": key},
    ).scalars().all()
    return list(dict.fromkeys(ids))


def get_study(conn: Connection, study_id: int, *, show_phi: bool = False) -> dict[str, Any] | None:
    phi = "patient_name, patient_id" if show_phi else "NULL AS patient_name, NULL AS patient_id"
    rows = _rows(
        conn,
        f"SELECT id, study_uid, orthanc_id, {phi}, accession_number, modalities, description, "  # noqa: S608
        "study_date, study_time, source_aet, first_received_at, last_received_at, stable_at, last_stable_at, status, "
        "orphan_ai_result, updated_at, purged_at FROM studies WHERE id = :id",
        {"id": study_id},
    )
    if not rows:
        return None
    study = rows[0]
    if not show_phi:
        study["patient_name"] = study["patient_id"] = MASK
    return study


def study_events(conn: Connection, study_id: int) -> list[dict[str, Any]]:
    """A study's events in the order they were recorded (events.id), not by `at`.

    Stage times are Orthanc's whole seconds while the worker's own events carry
    fractions, so sorting by `at` put `ai_sent` before its `delivery_queued` and
    `delivered` before its `delivery_started` within a second. The id is taken from a
    sequence at insert, so along a causal chain (each event written after the one
    before it committed) id order is causal order (docs/qi.md, "Event order").
    """
    return _rows(
        conn,
        "SELECT e.id, e.at, e.type, e.destination, e.job_id, e.series_id, s.series_uid, e.detail "
        "FROM events e LEFT JOIN series s ON s.id = e.series_id "
        "WHERE e.study_id = :id ORDER BY e.id",
        {"id": study_id},
    )


def study_series(conn: Connection, study_id: int) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT id, series_uid, orthanc_id, kind, linked_by, sender_aet, modality, description, series_number, "
        "instance_count, first_received_at, last_received_at, stable_at, routed_at "
        "FROM series WHERE study_id = :id ORDER BY first_received_at NULLS LAST, id",
        {"id": study_id},
    )


def study_jobs(conn: Connection, study_id: int) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT j.id, j.purpose, j.destination, j.rule_name, j.payload, j.state, j.attempts, "
        # A finished job has no next attempt, whatever its last schedule was.
        "CASE WHEN j.state IN (:queued, :failed) THEN j.next_attempt_at END AS next_attempt_at, "
        "j.orthanc_job_id, j.last_error, j.last_error_code, j.instances_sent, j.created_at, j.started_at, "
        "j.finished_at, (SELECT count(*) FROM job_series js WHERE js.job_id = j.id) AS series, "
        "(SELECT bool_or(is_resend) FROM job_series js WHERE js.job_id = j.id) AS resend "
        "FROM routing_jobs j WHERE j.study_id = :id ORDER BY j.created_at, j.id",
        {"id": study_id, "queued": JobState.QUEUED, "failed": JobState.FAILED},
    )


@dataclass(frozen=True)
class Stage:
    """One workflow stage as operators know it, with when it was reached (or None)."""

    name: str
    at: datetime | None
    note: str = ""
    applies: bool = True  # False: this study never reaches it (no AI route), so it is not pending


def study_stages(
    study: dict[str, Any], events: Sequence[dict[str, Any]], jobs: Sequence[dict[str, Any]], ai_name: str
) -> list[Stage]:
    """Study Received -> Sent to <AI> -> AI Results Back -> Routed to Destinations.

    "Routed" is reached when every delivery job that is not cancelled succeeded; its
    time is the last of those deliveries (the QI definition of delivered_at).
    Resend jobs (`resend` in study_jobs) and their events are left out, as in the
    study status and the QI views: a resend shows as its own job row and events and
    never sends a reached stage back to pending or moves its time.
    """
    resends = {j["id"] for j in jobs if j.get("resend")}
    required = [j for j in jobs if not j.get("resend")]

    def first(kind: str) -> datetime | None:
        times = [e["at"] for e in events if e["type"] == kind and e.get("job_id") not in resends]
        return min(times) if times else None

    ai_jobs = [j for j in required if j["purpose"] == Purpose.AI and j["state"] != JobState.CANCELLED]
    deliveries = [j for j in required if j["purpose"] == Purpose.DELIVERY and j["state"] != JobState.CANCELLED]
    done = [j for j in deliveries if j["state"] == JobState.SUCCEEDED]
    routed_at = None
    note = ""
    if deliveries and len(done) == len(deliveries):
        routed_at = max(j["finished_at"] for j in done if j["finished_at"] is not None)
        note = f"{len(done)} delivery job(s)"
    elif deliveries:
        note = f"{len(done)} of {len(deliveries)} delivery job(s) done"
    ai_note = "" if ai_jobs else "no AI route"
    return [
        Stage("Study Received", study.get("first_received_at")),
        Stage(f"Sent to {ai_name}", first(EventType.AI_SENT), ai_note, applies=bool(ai_jobs)),
        Stage("AI Results Back", first(EventType.AI_RESULT_RECEIVED), ai_note, applies=bool(ai_jobs)),
        Stage("Routed to Destinations", routed_at, note),
    ]


def stages_of_studies(
    conn: Connection, studies: Sequence[dict[str, Any]], ai_name: str
) -> dict[int, list[Stage]]:
    """study_stages for a page of studies (the API's study list), in two queries.

    Reads only what study_stages looks at: the AI events and each job's purpose, state,
    finish time and resend flag. The stages are study_stages', so they are the same as
    on the Study detail page.
    """
    ids = [int(s["id"]) for s in studies]
    if not ids:
        return {}
    events: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in _rows(
        conn,
        "SELECT study_id, type, at, job_id FROM events WHERE study_id = ANY(:ids) AND type = ANY(:types)",
        {"ids": ids, "types": [EventType.AI_SENT, EventType.AI_RESULT_RECEIVED]},
    ):
        events[row["study_id"]].append(row)
    jobs: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in _rows(
        conn,
        "SELECT j.id, j.study_id, j.purpose, j.state, j.finished_at, "
        "EXISTS (SELECT 1 FROM job_series js WHERE js.job_id = j.id AND js.is_resend) AS resend "
        "FROM routing_jobs j WHERE j.study_id = ANY(:ids)",
        {"ids": ids},
    ):
        jobs[row["study_id"]].append(row)
    return {int(s["id"]): study_stages(s, events[int(s["id"])], jobs[int(s["id"])], ai_name) for s in studies}


# --- queue ------------------------------------------------------------------------------


def get_job(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """One routing job by id (the API's job endpoints), without its study's PHI."""
    rows = _rows(
        conn,
        "SELECT j.id, j.study_id, s.accession_number, j.purpose, j.destination, j.rule_name, j.payload, j.state, "
        "j.attempts, j.next_attempt_at, j.last_error, j.last_error_code, j.instances_sent, j.created_at, "
        "j.started_at, j.finished_at, j.updated_at "
        "FROM routing_jobs j JOIN studies s ON s.id = j.study_id WHERE j.id = :id",
        {"id": job_id},
    )
    return rows[0] if rows else None


@dataclass(frozen=True)
class JobFilter:
    state: str
    destination: str | None = None
    purpose: str | None = None


def _job_where(flt: JobFilter) -> tuple[str, dict[str, Any]]:
    where = ["j.state = :state"]
    params: dict[str, Any] = {"state": flt.state}
    if flt.destination:
        where.append("j.destination = :dest")
        params["dest"] = flt.destination
    if flt.purpose:
        where.append("j.purpose = :purpose")
        params["purpose"] = flt.purpose
    return " AND ".join(where), params


def job_state_counts(conn: Connection) -> dict[str, int]:
    listed = [state for state in JOB_STATES if state is not JobState.SUCCEEDED]
    rows = _rows(
        conn,
        "SELECT state, count(*) AS n FROM routing_jobs WHERE state = ANY(:states) GROUP BY state",
        {"states": listed},
    )
    counts: dict[str, int] = {state: 0 for state in listed}
    counts.update({r["state"]: r["n"] for r in rows})
    return counts


def list_jobs(conn: Connection, flt: JobFilter, *, before_id: int | None = None, limit: int = 50) -> Page:
    """Jobs in one state, newest first, keyset-paginated on the job id."""
    where, params = _job_where(flt)
    if before_id is not None:
        where += " AND j.id < :before"
        params["before"] = before_id
    rows = _rows(
        conn,
        f"""
        SELECT j.id, j.study_id, s.accession_number, j.purpose, j.destination, j.rule_name, j.state,
               j.attempts, j.next_attempt_at, j.last_error, j.last_error_code, j.created_at, j.started_at,
               j.finished_at, j.updated_at, j.orthanc_job_id
        FROM routing_jobs j JOIN studies s ON s.id = j.study_id
        WHERE {where}
        ORDER BY j.id DESC LIMIT :lim
        """,  # noqa: S608
        {**params, "lim": limit + 1},
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = Cursor(rows[-1]["created_at"], rows[-1]["id"])
    return Page(rows, next_cursor)


def filtered_job_ids(conn: Connection, flt: JobFilter, *, limit: int = 10000) -> list[int]:
    """Ids of all jobs matching `flt` (bulk actions), capped at `limit`."""
    where, params = _job_where(flt)
    return list(
        conn.execute(
            text(f"SELECT j.id FROM routing_jobs j WHERE {where} ORDER BY j.id LIMIT :lim"),  # noqa: S608
            {**params, "lim": limit},
        ).scalars()
    )


# --- destinations -----------------------------------------------------------------------


def destination_stats(conn: Connection, since: datetime) -> dict[str, dict[str, Any]]:
    """Per destination since `since`: send attempts, successes, failures, and the last error.

    An attempt is one recorded outcome (ai_sent or delivered for a success,
    delivery_failed or delivery_dead for a failure), so the rate's denominator is
    the number of attempts that finished in the window.
    """
    stats: dict[str, dict[str, Any]] = {}
    for row in _rows(
        conn,
        "SELECT destination, count(*) FILTER (WHERE type = ANY(:ok)) AS ok, "
        "count(*) FILTER (WHERE type = ANY(:failed)) AS failed, "
        "max(at) FILTER (WHERE type = ANY(:ok)) AS last_ok_at "
        "FROM events WHERE type = ANY(:outcomes) "
        "AND at >= :since AND destination IS NOT NULL GROUP BY destination",
        {"since": since, "ok": list(SEND_OK_EVENTS), "failed": list(SEND_FAILED_EVENTS),
         "outcomes": [*SEND_OK_EVENTS, *SEND_FAILED_EVENTS]},
    ):
        stats[row["destination"]] = {**row, "last_error": None, "last_error_at": None}
    for row in _rows(
        conn,
        "SELECT DISTINCT ON (destination) destination, at, detail->>'error' AS error "
        "FROM events WHERE type = ANY(:failed) AND at >= :since "
        "AND destination IS NOT NULL ORDER BY destination, at DESC",
        {"since": since, "failed": list(SEND_FAILED_EVENTS)},
    ):
        entry = stats.setdefault(row["destination"], {"destination": row["destination"], "ok": 0, "failed": 0,
                                                      "last_ok_at": None})
        entry["last_error"] = row["error"]
        entry["last_error_at"] = row["at"]
    return stats


@dataclass(frozen=True)
class DestinationState:
    """One destination's hold (if any) and how many jobs wait for it.

    The single definition every operator surface reads (app pages, `./orthanc`,
    `make status`, /metrics), so they can never disagree about what is held.
    """

    destination: str
    kind: HoldKind | None
    held_at: datetime | None
    held_by: str | None
    reason: str | None
    jobs_waiting: int
    last_error: str | None
    next_probe_at: datetime | None
    held_for_s: float | None

    @property
    def held(self) -> bool:
        return self.kind is not None

    def summary(self, zone: ZoneInfo, now: datetime | None = None) -> str | None:
        """The one line every surface prints for a held destination, or None when not held.

        "outage since 14:05, 3 jobs waiting" (the worker's automatic hold) or
        "on hold by ana since 14:05 (PACS upgrade), 3 jobs waiting". Times are in the
        site's zone; a hold that began on an earlier day shows its date too, so
        "since 14:05" never silently means yesterday.
        """
        if self.kind is None or self.held_at is None:
            return None
        local_now = (now or datetime.now(UTC)).astimezone(zone)
        started = self.held_at.astimezone(zone)
        since = started.strftime("%H:%M" if started.date() == local_now.date() else "%Y-%m-%d %H:%M")
        waiting = f"{self.jobs_waiting} job{'' if self.jobs_waiting == 1 else 's'} waiting"
        if self.kind is HoldKind.OUTAGE:
            return f"outage since {since}, {waiting}"
        reason = f" ({self.reason})" if self.reason else ""
        return f"on hold by {self.held_by} since {since}{reason}, {waiting}"


def destination_states(conn: Connection, names: Iterable[str] = ()) -> dict[str, DestinationState]:
    """Per destination, by name: its hold (operator or outage) and its waiting jobs.

    Waiting jobs are those in OPEN_JOB_STATES (queued, failed, sending): a hold keeps
    them from being claimed, so this is what piles up until it is lifted.
    Covers every held destination, every destination with a waiting job, and `names`
    (e.g. Orthanc's modalities, so an idle one is listed as not held). The count uses
    routing_jobs_state_idx (state, destination), so it stays cheap with a deep backlog.
    """
    rows = _rows(
        conn,
        """
        WITH waiting AS (
            SELECT destination, count(*) AS n FROM routing_jobs
            WHERE state = ANY(:open) GROUP BY destination
        ), known AS (
            SELECT destination FROM destination_holds
            UNION SELECT destination FROM waiting
            UNION SELECT unnest(CAST(:names AS text[]))
        )
        SELECT k.destination, h.kind, h.held_at, h.held_by, h.reason, h.last_error, h.next_probe_at,
               COALESCE(w.n, 0) AS jobs_waiting, EXTRACT(EPOCH FROM now() - h.held_at)::float AS held_for_s
        FROM known k
        LEFT JOIN destination_holds h ON h.destination = k.destination
        LEFT JOIN waiting w ON w.destination = k.destination
        ORDER BY k.destination
        """,
        {"names": list(names), "open": list(OPEN_JOB_STATES)},
    )
    return {
        r["destination"]: DestinationState(
            destination=r["destination"], kind=HoldKind(r["kind"]) if r["kind"] else None, held_at=r["held_at"],
            held_by=r["held_by"], reason=r["reason"], jobs_waiting=r["jobs_waiting"], last_error=r["last_error"],
            next_probe_at=r["next_probe_at"], held_for_s=r["held_for_s"],
        )
        for r in rows
    }


def held_destinations(conn: Connection) -> list[DestinationState]:
    """Only the held destinations, by name (banners on the Overview and Queue pages)."""
    return [s for s in destination_states(conn).values() if s.held]


def open_jobs_by_destination(conn: Connection) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for row in _rows(
        conn,
        "SELECT destination, state, count(*) AS n FROM routing_jobs "
        "WHERE state = ANY(:states) GROUP BY destination, state",
        {"states": list(BACKLOG_STATES)},
    ):
        result.setdefault(row["destination"], {})[row["state"]] = row["n"]
    return result


# --- audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action_prefix: str | None = None
    target: str | None = None
    source: str | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None


def search_audit(conn: Connection, flt: AuditFilter, *, cursor: Cursor | None = None, limit: int = 50) -> Page:
    """Audit entries, newest first, keyset-paginated on (at, id)."""
    where = ["true"]
    params: dict[str, Any] = {"lim": limit + 1}
    if cursor is not None:
        where.append("(at, id) < (:c_at, :c_id)")
        params.update(c_at=cursor.at, c_id=cursor.id)
    if flt.actor:
        where.append("actor = :actor")
        params["actor"] = flt.actor
    if flt.action_prefix:
        where.append("starts_with(action, :action)")
        params["action"] = flt.action_prefix
    if flt.target:
        where.append("target = :target")
        params["target"] = flt.target
    if flt.source:
        where.append("source = :source")
        params["source"] = flt.source
    if flt.at_from is not None:
        where.append("at >= :at_from")
        params["at_from"] = flt.at_from
    if flt.at_to is not None:
        where.append("at < :at_to")
        params["at_to"] = flt.at_to
    rows = _rows(
        conn,
        f"SELECT id, at, actor, source, action, target, before, after FROM audit_log WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY at DESC, id DESC LIMIT :lim",
        params,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = Cursor(rows[-1]["at"], rows[-1]["id"])
    return Page(rows, next_cursor)


def audit_actors(conn: Connection) -> list[str]:
    """Known actors via a loose index scan on audit_log_actor_idx."""
    return list(
        conn.execute(
            text(
                """
                WITH RECURSIVE a AS (
                    (SELECT actor FROM audit_log ORDER BY actor LIMIT 1)
                    UNION ALL
                    SELECT (SELECT actor FROM audit_log WHERE actor > a.actor ORDER BY actor LIMIT 1)
                    FROM a WHERE a.actor IS NOT NULL
                )
                SELECT actor FROM a WHERE actor IS NOT NULL
                """
            )
        ).scalars()
    )


# --- rules ------------------------------------------------------------------------------


def config_status(conn: Connection, name: str) -> dict[str, Any] | None:
    rows = _rows(
        conn, "SELECT name, loaded_at, checksum, error, error_at, content FROM config_status WHERE name = :n",
        {"n": name},
    )
    return rows[0] if rows else None


def recent_studies(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The newest studies (for pickers), without PHI."""
    return _rows(
        conn,
        "SELECT id, accession_number, description, source_aet, first_received_at, status FROM studies "
        "WHERE first_received_at IS NOT NULL ORDER BY first_received_at DESC, id DESC LIMIT :lim",
        {"lim": limit},
    )



def studies_of_targets(conn: Connection, targets: Iterable[str | None]) -> dict[str, int]:
    """The study each audit target ("study:12", "job:40") concerns, for links from the Audit page."""
    studies: dict[str, int] = {}
    jobs: dict[int, str] = {}
    for target in targets:
        kind, _, number = (target or "").partition(":")
        if not number.isdigit():
            continue
        if kind == "study":
            studies[target or ""] = int(number)
        elif kind == "job":
            jobs[int(number)] = target or ""
    if jobs:
        rows = conn.execute(text("SELECT id, study_id FROM routing_jobs WHERE id = ANY(:ids)"),
                            {"ids": list(jobs)}).all()
        studies.update({jobs[row.id]: row.study_id for row in rows})
    return studies


def retention_state(conn: Connection) -> dict[str, Any]:
    """The last retention run (core/retention.py) and how many studies are purged: Overview, /metrics."""
    row = conn.execute(text("SELECT ran_at, actor, source, purged, failed, kept, oldest_kept, detail "
                            "FROM retention_status WHERE name = 'last'")).mappings().first()
    total = conn.execute(text("SELECT count(*) FROM studies WHERE purged_at IS NOT NULL")).scalar_one()
    state: dict[str, Any] = dict(row) if row else {
        "ran_at": None, "actor": None, "source": None, "purged": 0, "failed": 0, "kept": 0, "oldest_kept": None,
        "detail": {}}
    state["purged_total"] = int(total)
    return state
