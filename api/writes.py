"""Operator actions: retry, cancel, resend, hold, release. Operator role and above.

Each is one core/operations.py call in its own transaction, as from the app and
`./orthanc`: the operation checks the job's state under a row lock, records the event
and writes the audit entry, here with the source `api` (AuditSource.API) and the
token's name as the actor. An action that does not apply now (retrying a queued job,
cancelling one being sent) is a 409 with the operation's own message; an unknown job,
study or destination is a 404, before anything is written.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from api.access import Caller, hub_of, operator
from api.models import Done, HoldRequest, Problem, ResendRequest
from api.params import DestinationName, JobId, StudyId
from api.reads import destination_states
from core import operations, queries
from core.states import AuditSource

router = APIRouter(prefix="/v1")
Operator = Annotated[Caller, Depends(operator)]
REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such job, study or destination"},
    409: {"model": Problem, "description": "the action does not apply now; the detail says why"},
}


def _job_exists(request: Request, job_id: int) -> None:
    with hub_of(request).reading() as conn:
        if queries.get_job(conn, job_id) is None:
            raise HTTPException(404, f"job {job_id} does not exist")


@router.post("/jobs/{job_id}/retry", response_model=Done, responses=REFUSALS, tags=["actions"],
             summary="Queue a failed, dead or cancelled job again, with fresh attempts",
             description="core.operations.retry_job")
def retry(request: Request, job_id: JobId, caller: Operator) -> Done:
    _job_exists(request, job_id)
    with hub_of(request).writing() as conn:
        operations.retry_job(conn, job_id, actor=caller.name, source=AuditSource.API)
    return Done(message=f"job {job_id} is queued again")


@router.post("/jobs/{job_id}/cancel", response_model=Done, responses=REFUSALS, tags=["actions"],
             summary="Cancel a queued, failed or dead job (not one being sent)",
             description="core.operations.cancel_job")
def cancel(request: Request, job_id: JobId, caller: Operator) -> Done:
    _job_exists(request, job_id)
    with hub_of(request).writing() as conn:
        operations.cancel_job(conn, job_id, actor=caller.name, source=AuditSource.API)
    return Done(message=f"job {job_id} is cancelled")


@router.post("/studies/{study_id}/resend", response_model=Done, responses=REFUSALS, tags=["actions"],
             summary="Send a study's series to a destination again, as a new job",
             description="core.operations.resend_study. The destination must be a modality in Orthanc (503 when "
                         "Orthanc does not answer); series already delivered there are sent again.")
def resend(request: Request, study_id: StudyId, body: ResendRequest, caller: Operator) -> Done:
    hub = hub_of(request)
    if body.destination not in hub.orthanc.modalities():
        raise HTTPException(404, f"unknown destination {body.destination!r}: not a modality in Orthanc")
    with hub.writing() as conn:
        if queries.get_study(conn, study_id) is None:
            raise HTTPException(404, f"study {study_id} does not exist")
        job_id = operations.resend_study(conn, study_id, body.destination, actor=caller.name, source=AuditSource.API,
                                         kind=None if body.kind == "all" else body.kind)
    return Done(message=f"study {study_id} queued for {body.destination} as job {job_id}", job_id=job_id)


@router.post("/destinations/{name}/hold", response_model=Done, responses=REFUSALS, tags=["actions"],
             summary="Hold a destination: its jobs wait, spending no attempts, until released",
             description="core.operations.hold_destination. Works while Orthanc is down (a hold is a database row). "
                         "An automatic outage hold becomes an operator's hold.")
def hold(request: Request, name: DestinationName, caller: Operator, body: HoldRequest | None = None) -> Done:
    hub = hub_of(request)
    states, _ = destination_states(hub)
    if name not in states:
        raise HTTPException(404, f"no destination {name!r}: not in Orthanc or .env, not held, no jobs")
    reason = (body.reason or "").strip() or None if body else None
    with hub.writing() as conn:
        taken = operations.hold_destination(conn, name, actor=caller.name, source=AuditSource.API, reason=reason)
    if not taken:
        raise HTTPException(409, f"{name} is already on hold by an operator")
    return Done(message=f"{name} is on hold")


@router.post("/destinations/{name}/release", response_model=Done, responses=REFUSALS, tags=["actions"],
             summary="Release a held destination (an operator's or an outage hold): its jobs are sent",
             description="core.operations.release_destination")
def release(request: Request, name: DestinationName, caller: Operator) -> Done:
    hub = hub_of(request)
    states, _ = destination_states(hub)
    if name not in states:
        raise HTTPException(404, f"no destination {name!r}: not in Orthanc or .env, not held, no jobs")
    with hub.writing() as conn:
        released = operations.release_destination(conn, name, actor=caller.name, source=AuditSource.API)
    if not released:
        raise HTTPException(409, f"{name} is not held")
    return Done(message=f"{name} is released")
