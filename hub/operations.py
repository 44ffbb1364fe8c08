"""Operator actions on routing jobs: retry, cancel, resend. Each is audited.

The app and the CLI call these; the worker's dispatcher then picks the job up. A
job that Orthanc is sending right now is not cancelled under its feet: `cancel`
refuses jobs in `sending` so that in-flight states stay consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from hub.recorder import add_event, audit, queue_job, refresh_study_status


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


def retry_job(conn: Connection, job_id: int, *, actor: str, source: str) -> None:
    """Put a failed, dead or cancelled job back in the queue now, with fresh attempts."""
    job = _job(conn, job_id)
    if job["state"] not in ("failed", "dead", "cancelled"):
        raise OperationError(f"job {job_id} is {job['state']}; only failed, dead or cancelled jobs can be retried")
    now = _now()
    conn.execute(
        text(
            "UPDATE routing_jobs SET state = 'queued', attempts = 0, next_attempt_at = :now, "
            "finished_at = NULL, updated_at = :now WHERE id = :id"
        ),
        {"id": job_id, "now": now},
    )
    add_event(conn, job["study_id"], "manual_retry", now, job_id=job_id, destination=job["destination"],
              detail={"actor": actor, "previous_state": job["state"]})
    audit(conn, actor=actor, source=source, action="job.retry", target=f"job:{job_id}",
          before={"state": job["state"], "attempts": job["attempts"]}, after={"state": "queued"})
    refresh_study_status(conn, job["study_id"])


def retry_dead_jobs(conn: Connection, job_ids: Sequence[int], *, actor: str, source: str) -> int:
    """Retry each dead job in `job_ids` (bulk retry of a filtered list); returns the count."""
    done = 0
    for job_id in job_ids:
        if _job(conn, job_id)["state"] == "dead":
            retry_job(conn, job_id, actor=actor, source=source)
            done += 1
    return done


def cancel_job(conn: Connection, job_id: int, *, actor: str, source: str) -> None:
    """Cancel a job that is waiting (queued or failed) or dead."""
    job = _job(conn, job_id)
    if job["state"] not in ("queued", "failed", "dead"):
        raise OperationError(f"job {job_id} is {job['state']}; only queued, failed or dead jobs can be cancelled")
    now = _now()
    conn.execute(
        text("UPDATE routing_jobs SET state = 'cancelled', finished_at = :now, updated_at = :now WHERE id = :id"),
        {"id": job_id, "now": now},
    )
    add_event(conn, job["study_id"], "cancelled", now, job_id=job_id, destination=job["destination"],
              detail={"actor": actor, "previous_state": job["state"]})
    audit(conn, actor=actor, source=source, action="job.cancel", target=f"job:{job_id}",
          before={"state": job["state"]}, after={"state": "cancelled"})
    refresh_study_status(conn, job["study_id"])


def resend_study(
    conn: Connection, study_id: int, destination: str, *, actor: str, source: str, kind: str | None = None
) -> int:
    """Queue a new delivery of the study's series (optionally one kind) to `destination`."""
    series_ids = conn.execute(
        text("SELECT id FROM series WHERE study_id = :id AND (CAST(:kind AS text) IS NULL OR kind = :kind)"),
        {"id": study_id, "kind": kind},
    ).scalars().all()
    if not series_ids:
        raise OperationError(f"study {study_id} has no series to resend")
    now = _now()
    job_id = queue_job(
        conn, study_id=study_id, purpose="delivery", destination=destination, series_ids=series_ids,
        payload="study" if kind is None else ("ai_results" if kind == "ai_result" else "matched"),
        rule_name=None, at=now, resend=True,
    )
    assert job_id is not None  # resends are never deduplicated away
    add_event(conn, study_id, "resend", now, job_id=job_id, destination=destination, detail={"actor": actor})
    audit(conn, actor=actor, source=source, action="study.resend", target=f"study:{study_id}",
          after={"destination": destination, "job": job_id, "series": len(series_ids)})
    refresh_study_status(conn, study_id)
    return job_id


def hold_destination(conn: Connection, destination: str, *, actor: str, source: str, reason: str | None = None) -> bool:
    """Stop sending to `destination` (jobs wait, without spending attempts); False if already held."""
    held = conn.execute(
        text("INSERT INTO destination_holds (destination, held_by, reason) VALUES (:d, :a, :r) "
             "ON CONFLICT DO NOTHING"),
        {"d": destination, "a": actor, "r": reason},
    ).rowcount == 1
    if held:
        audit(conn, actor=actor, source=source, action="destination.hold", target=f"destination:{destination}",
              after={"held": True, "reason": reason})
    return held


def release_destination(conn: Connection, destination: str, *, actor: str, source: str) -> bool:
    """Resume sending to `destination`; False if it was not held."""
    released = conn.execute(
        text("DELETE FROM destination_holds WHERE destination = :d"), {"d": destination}
    ).rowcount == 1
    if released:
        audit(conn, actor=actor, source=source, action="destination.release", target=f"destination:{destination}",
              before={"held": True}, after={"held": False})
    return released
