"""Operator actions on routing jobs: retry, cancel, resend; hold and release a destination. Each is audited.

The app and the CLI call these; the worker's dispatcher then picks the job up. A
job that Orthanc is sending right now is not cancelled under its feet: `cancel`
refuses jobs in `sending` so that in-flight states stay consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from core import recorder
from core.recorder import add_event, audit, queue_job, refresh_study_status
from core.states import CANCELLABLE, RETRYABLE, EventType, HoldKind, JobState, Payload, Purpose, SeriesKind


class OperationError(ValueError):
    """The requested action does not apply to this job in its current state."""


def _now() -> datetime:
    return datetime.now(UTC)


def _job(conn: Connection, job_id: int) -> dict:
    row = conn.execute(
        text("SELECT id, study_id, state, destination, attempts, purpose FROM routing_jobs WHERE id = :id FOR UPDATE"),
        {"id": job_id},
    ).mappings().first()
    if row is None:
        raise OperationError(f"job {job_id} does not exist")
    return dict(row)


def _not_purged(conn: Connection, study_id: int) -> None:
    """Retention deleted the study from Orthanc (core/retention.py): there is nothing left to send."""
    purged = conn.execute(text("SELECT purged_at FROM studies WHERE id = :id"), {"id": study_id}).scalar()
    if purged is not None:
        at = purged.astimezone(UTC)
        raise OperationError(f"study {study_id} was deleted from Orthanc by retention ({at:%Y-%m-%d %H:%M} UTC): "
                             "nothing is left to send until the modality sends it again")


def retry_job(conn: Connection, job_id: int, *, actor: str, source: str) -> None:
    """Put a failed, dead or cancelled job back in the queue now, with fresh attempts."""
    job = _job(conn, job_id)
    if job["state"] not in RETRYABLE:
        raise OperationError(f"job {job_id} is {job['state']}; only failed, dead or cancelled jobs can be retried")
    _not_purged(conn, job["study_id"])
    now = _now()
    recorder.requeue_job(conn, job_id, at=now)
    add_event(conn, job["study_id"], EventType.MANUAL_RETRY, now, job_id=job_id, destination=job["destination"],
              detail={"actor": actor, "previous_state": job["state"]})
    audit(conn, actor=actor, source=source, action="job.retry", target=f"job:{job_id}",
          before={"state": job["state"], "attempts": job["attempts"]}, after={"state": JobState.QUEUED})
    refresh_study_status(conn, job["study_id"])


def retry_dead_jobs(conn: Connection, job_ids: Sequence[int], *, actor: str, source: str) -> int:
    """Retry each dead job in `job_ids` (bulk retry of a filtered list); returns the count."""
    done = 0
    for job_id in job_ids:
        if _job(conn, job_id)["state"] == JobState.DEAD:
            retry_job(conn, job_id, actor=actor, source=source)
            done += 1
    return done


def cancel_job(conn: Connection, job_id: int, *, actor: str, source: str) -> None:
    """Cancel a job that is waiting (queued or failed) or dead."""
    job = _job(conn, job_id)
    if job["state"] not in CANCELLABLE:
        raise OperationError(f"job {job_id} is {job['state']}; only queued, failed or dead jobs can be cancelled")
    now = _now()
    recorder.cancel_job(conn, job_id, at=now)
    add_event(conn, job["study_id"], EventType.CANCELLED, now, job_id=job_id, destination=job["destination"],
              detail={"actor": actor, "previous_state": job["state"]})
    audit(conn, actor=actor, source=source, action="job.cancel", target=f"job:{job_id}",
          before={"state": job["state"]}, after={"state": JobState.CANCELLED})
    refresh_study_status(conn, job["study_id"])


def resend_study(
    conn: Connection, study_id: int, destination: str, *, actor: str, source: str, kind: str | None = None
) -> int:
    """Queue a new delivery of the study's series (optionally one kind) to `destination`.

    Series from a sender that failed the origin check (kind 'rejected', worker/ingest.py)
    are never sent: a resend of the whole study must not deliver a forged AI result.
    """
    _not_purged(conn, study_id)
    series_ids = conn.execute(
        text("SELECT id FROM series WHERE study_id = :id AND kind <> :rejected "
             "AND (CAST(:kind AS text) IS NULL OR kind = :kind)"),
        {"id": study_id, "kind": kind, "rejected": SeriesKind.REJECTED},
    ).scalars().all()
    if not series_ids:
        raise OperationError(f"study {study_id} has no series to resend")
    now = _now()
    job_id = queue_job(
        conn, study_id=study_id, purpose=Purpose.DELIVERY, destination=destination, series_ids=series_ids,
        payload=Payload.STUDY if kind is None else (Payload.AI_RESULTS if kind == SeriesKind.AI_RESULT else Payload.MATCHED),
        rule_name=None, at=now, resend=True,
    )
    assert job_id is not None  # resends are never deduplicated away
    add_event(conn, study_id, EventType.RESEND, now, job_id=job_id, destination=destination, detail={"actor": actor})
    audit(conn, actor=actor, source=source, action="study.resend", target=f"study:{study_id}",
          after={"destination": destination, "job": job_id, "series": len(series_ids)})
    refresh_study_status(conn, study_id)
    return job_id


def _hold_row(conn: Connection, destination: str) -> dict | None:
    """The destination's hold, locked, as the audit's "before" (None when not held)."""
    row = conn.execute(
        text("SELECT kind, held_at, held_by, reason, last_error FROM destination_holds "
             "WHERE destination = :d FOR UPDATE"),
        {"d": destination},
    ).mappings().first()
    return None if row is None else {"held": True, **row}


def hold_destination(conn: Connection, destination: str, *, actor: str, source: str, reason: str | None = None) -> bool:
    """Stop sending to `destination` (jobs wait, without spending attempts); False if an operator already holds it.

    An automatic outage hold (HoldKind.OUTAGE) becomes an operator hold: the worker
    stops probing it, so it stays held until a person releases it even once it answers
    again (a PACS in maintenance may answer C-ECHO before it should receive). held_at
    restarts, so "on hold by <actor> since" is the operator's time; the outage's own
    start stays in destination_outages and in this action's audit entry.
    """
    before = _hold_row(conn, destination)
    taken = recorder.hold_destination(conn, destination, actor=actor, reason=reason, at=_now())
    if taken:
        audit(conn, actor=actor, source=source, action="destination.hold", target=f"destination:{destination}",
              before=before or {"held": False},
              after={"held": True, "kind": HoldKind.OPERATOR.value, "reason": reason})
    return taken


def release_destination(conn: Connection, destination: str, *, actor: str, source: str) -> bool:
    """Resume sending to `destination`, whoever held it; False if it was not held.

    Releasing an outage hold only lifts the hold (its jobs may be tried at once): if
    the destination still does not answer, the worker puts it on hold again.
    """
    before = _hold_row(conn, destination)
    if before is None:
        return False
    recorder.release_destination(conn, destination)
    audit(conn, actor=actor, source=source, action="destination.release", target=f"destination:{destination}",
          before=before, after={"held": False})
    return True


# --- a study's jobs at once (the Studies page's bulk actions, issue 16) ----------------------

# Retried with a study: what failed on its own. A cancelled job was an operator's decision;
# it is retried from the Queue, one by one.
STUDY_RETRY_STATES: tuple[JobState, ...] = (JobState.FAILED, JobState.DEAD)


def _study_job_ids(conn: Connection, study_id: int, states: Sequence[JobState]) -> list[int]:
    return list(conn.execute(
        text("SELECT id FROM routing_jobs WHERE study_id = :id AND state = ANY(:states) ORDER BY id"),
        {"id": study_id, "states": [s.value for s in states]},
    ).scalars())


def retry_study(conn: Connection, study_id: int, *, actor: str, source: str) -> int:
    """Retry the study's failed and dead jobs (retry_job each, so each is audited); how many."""
    job_ids = _study_job_ids(conn, study_id, STUDY_RETRY_STATES)
    for job_id in job_ids:
        retry_job(conn, job_id, actor=actor, source=source)
    return len(job_ids)


def cancel_study(conn: Connection, study_id: int, *, actor: str, source: str) -> int:
    """Cancel the study's queued, failed and dead jobs (cancel_job each, audited); how many.
    Jobs Orthanc is sending are left to finish (cancel_job refuses them)."""
    job_ids = _study_job_ids(conn, study_id, sorted(CANCELLABLE))
    for job_id in job_ids:
        cancel_job(conn, job_id, actor=actor, source=source)
    return len(job_ids)
