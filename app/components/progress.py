"""Live progress of sends in flight (issue 16): instances sent of the batch, read from Orthanc.

Read at view time from Orthanc's REST API (GET /jobs/{id}, core.orthanc_client.StoreProgress)
with the short-timeout health client, so a page that shows jobs in `sending` says how far
each store is. Orthanc down, or a job it forgot (a crash, JobsHistorySize), never breaks the
page: the cell says what is known.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.components.orthanc import health_client
from core.orthanc_client import OrthancError, OrthancUnavailable

MAX_JOBS = 50  # one GET each; a page never shows more sending jobs than its rows


def store_progress(orthanc_job_ids: Iterable[str | None]) -> dict[str, str]:
    """Orthanc job id -> 'N of M instances (P %)', or why it is unknown."""
    ids = list(dict.fromkeys(j for j in orthanc_job_ids if j))[:MAX_JOBS]
    out: dict[str, str] = {}
    client = health_client()
    for job_id in ids:
        try:
            out[job_id] = client.store_progress(job_id).label()
        except OrthancUnavailable:
            return {**out, **{j: "unknown: Orthanc unreachable" for j in ids if j not in out}}
        except OrthancError as exc:
            out[job_id] = "unknown: Orthanc no longer knows this job" if exc.status == 404 else f"unknown: {exc}"[:80]
    return out
