"""Read endpoints: studies (list, lookup, detail, timeline), jobs, destinations. Viewer role.

Each is a call of the core/queries.py function the app's page uses (named in each
route's description), so the API and the app cannot disagree about a study's stages,
a job's state or a destination's hold. Patient names and ids are selected only for
tokens whose role sees them (api/access.py, Caller.sees_patient_data), as on the
app's Studies and Study detail pages.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.access import Caller, hub_of, viewer
from api.errors import BadRequest
from api.hub import Hub
from api.models import (
    Caller as CallerModel,
)
from api.models import (
    Destination,
    Destinations,
    Event,
    Job,
    JobDetail,
    JobPage,
    Problem,
    Series,
    Stage,
    Study,
    StudyDetail,
    StudyInfo,
    StudyJob,
    StudyMatches,
    StudyPage,
    Timeline,
)
from api.params import BIGINT_MAX, NO_CONTROL, DestinationName, JobId, StudyId, check_day, decode_cursor, encode_cursor
from core import queries
from core.orthanc_client import OrthancError
from core.states import JobState, Purpose, StudyStatus

router = APIRouter(prefix="/v1")
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such study, job or destination"}}
PAGE_MAX = 200


def _stages(stages: list[queries.Stage]) -> list[Stage]:
    return [Stage(name=s.name, at=s.at, note=s.note) for s in stages]


def _day_start(day: date, hub: Hub) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=hub.settings.zone)


@router.get("/whoami", response_model=CallerModel, tags=["auth"], summary="The token's name and role")
def whoami(caller: Annotated[Caller, Depends(viewer)]) -> CallerModel:
    return CallerModel(name=caller.name, role=caller.role, sees_patient_data=caller.sees_patient_data)


# --- studies -------------------------------------------------------------------------------


@router.get("/studies", response_model=StudyPage, tags=["studies"], summary="Studies, newest arrival first",
            description="The app's Studies page (core.queries.search_studies), with each study's stages "
                        "(core.queries.study_stages). Days are calendar days in the hub's TZ, both included. "
                        "Text filters match exactly (modality: any series of the study). Keyset pages: pass "
                        "`next_cursor` back as `cursor`.")
def list_studies(
    request: Request,
    caller: Annotated[Caller, Depends(viewer)],
    status: Annotated[StudyStatus | None, Query(description="the study's status")] = None,
    received_from: Annotated[date | None, Query(description="first day received (YYYY-MM-DD, hub's TZ)")] = None,
    received_to: Annotated[date | None, Query(description="last day received, included")] = None,
    accession: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL)] = None,
    patient_id: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL,
                                            description="operator role and above (viewers do not see it)")] = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=NO_CONTROL, description="e.g. CR, CT, SR")] = None,
    source_aet: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL)] = None,
    destination: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL,
                                             description="has a routing job to this destination")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> StudyPage:
    hub = hub_of(request)
    check_day(received_from, "received_from")
    check_day(received_to, "received_to")
    if received_from and received_to and received_to < received_from:
        raise BadRequest(f"received_to {received_to} is before received_from {received_from}")
    if patient_id and not caller.sees_patient_data:
        raise HTTPException(403, "filtering by patient_id needs the operator role (viewers do not see patient ids)")
    flt = queries.StudyFilter(
        received_from=_day_start(received_from, hub) if received_from else None,
        received_to=_day_start(received_to + timedelta(days=1), hub) if received_to else None,
        accession=(accession or "").strip() or None,
        patient_id=(patient_id or "").strip() or None,
        modality=(modality or "").strip().upper() or None,
        source_aet=(source_aet or "").strip() or None,
        status=status.value if status else None,
        destination=(destination or "").strip() or None,
    )
    with hub.reading() as conn:
        page = queries.search_studies(conn, flt, cursor=decode_cursor(cursor), limit=limit,
                                      show_phi=caller.sees_patient_data)
        stages = queries.stages_of_studies(conn, page.rows, hub.settings.ai_modality)
    studies = [
        Study(**{**row, "series": row["series"] or 0,
                 "destinations": [d for d in (row["destinations"] or "").split(", ") if d],
                 "stages": _stages(stages[row["id"]])})
        for row in page.rows
    ]
    return StudyPage(studies=studies, next_cursor=encode_cursor(page.next_cursor))


@router.get("/studies/lookup", response_model=StudyMatches, tags=["studies"], summary="Find studies by a key",
            description="The Study detail page's lookup (core.queries.find_study): a study number, a "
                        "StudyInstanceUID, an Orthanc id or an accession number.")
def lookup_study(
    request: Request,
    caller: Annotated[Caller, Depends(viewer)],
    key: Annotated[str, Query(min_length=1, max_length=200, pattern=NO_CONTROL)],
) -> StudyMatches:
    with hub_of(request).reading() as conn:
        return StudyMatches(ids=queries.find_study(conn, key))


def _study(conn: Any, study_id: int, caller: Caller) -> dict[str, Any]:
    study = queries.get_study(conn, study_id, show_phi=caller.sees_patient_data)
    if study is None:
        raise HTTPException(404, f"study {study_id} does not exist")
    return study


@router.get("/studies/{study_id}", response_model=StudyDetail, responses=NOT_FOUND, tags=["studies"],
            summary="One study: stages, series, routing jobs",
            description="The app's Study detail page (core.queries.get_study, study_series, study_jobs, "
                        "study_stages).")
def get_study(request: Request, study_id: StudyId, caller: Annotated[Caller, Depends(viewer)]) -> StudyDetail:
    hub = hub_of(request)
    with hub.reading() as conn:
        study = _study(conn, study_id, caller)
        events = queries.study_events(conn, study_id)
        series = queries.study_series(conn, study_id)
        jobs = queries.study_jobs(conn, study_id)
    stages = queries.study_stages(study, events, jobs, hub.settings.ai_modality)
    return StudyDetail(study=StudyInfo(**study), stages=_stages(stages), series=[Series(**s) for s in series],
                       jobs=[StudyJob(**j) for j in jobs])


@router.get("/studies/{study_id}/timeline", response_model=Timeline, responses=NOT_FOUND, tags=["studies"],
            summary="One study's timeline: its stages and every recorded event",
            description="core.queries.study_events, in the order they were recorded, and study_stages.")
def study_timeline(request: Request, study_id: StudyId, caller: Annotated[Caller, Depends(viewer)]) -> Timeline:
    hub = hub_of(request)
    with hub.reading() as conn:
        study = _study(conn, study_id, caller)
        events = queries.study_events(conn, study_id)
        jobs = queries.study_jobs(conn, study_id)
    stages = queries.study_stages(study, events, jobs, hub.settings.ai_modality)
    return Timeline(study_id=study_id, status=study["status"], stages=_stages(stages),
                    events=[Event(**e) for e in events])


# --- jobs ------------------------------------------------------------------------------------


@router.get("/jobs", response_model=JobPage, tags=["jobs"], summary="Routing jobs in one state, newest first",
            description="The app's Queue page (core.queries.list_jobs, job_state_counts).")
def list_jobs(
    request: Request,
    caller: Annotated[Caller, Depends(viewer)],
    state: Annotated[JobState, Query(description="queued, sending, failed (waiting to retry), dead, cancelled "
                                                 "or succeeded")],
    destination: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL)] = None,
    purpose: Annotated[Purpose | None, Query()] = None,
    before_id: Annotated[int | None, Query(ge=1, le=BIGINT_MAX, description="next_before_id of the previous page")]
    = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
) -> JobPage:
    flt = queries.JobFilter(state=state.value, destination=(destination or "").strip() or None,
                            purpose=purpose.value if purpose else None)
    with hub_of(request).reading() as conn:
        page = queries.list_jobs(conn, flt, before_id=before_id, limit=limit)
        counts = queries.job_state_counts(conn)
    return JobPage(jobs=[Job(**row) for row in page.rows],
                   next_before_id=page.next_cursor.id if page.next_cursor else None, counts=counts)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=NOT_FOUND, tags=["jobs"], summary="One job")
def get_job(request: Request, job_id: JobId, caller: Annotated[Caller, Depends(viewer)]) -> JobDetail:
    with hub_of(request).reading() as conn:
        job = queries.get_job(conn, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return JobDetail(**job)


# --- destinations ----------------------------------------------------------------------------


def destination_states(hub: Hub) -> tuple[dict[str, queries.DestinationState], set[str] | None]:
    """Every destination anyone knows of: Orthanc's modalities (None when Orthanc does not
    answer: holds must work during an outage), .env's MODALITY_ lines, and every held
    destination or one with waiting jobs (core.queries.destination_states)."""
    try:
        in_orthanc: set[str] | None = set(hub.orthanc.modalities())
    except OrthancError:
        in_orthanc = None
    names = (in_orthanc or set()) | set(hub.settings.modalities)
    with hub.reading() as conn:
        return queries.destination_states(conn, sorted(names)), in_orthanc


def _destination(hub: Hub, state: queries.DestinationState, in_orthanc: set[str] | None) -> Destination:
    return Destination(
        name=state.destination, ai_node=state.destination == hub.settings.ai_modality,
        in_orthanc=None if in_orthanc is None else state.destination in in_orthanc,
        held=state.held, kind=state.kind.value if state.kind else None, held_at=state.held_at,
        held_by=state.held_by, reason=state.reason, held_for_s=state.held_for_s if state.held else None,
        jobs_waiting=state.jobs_waiting, last_error=state.last_error, next_probe_at=state.next_probe_at,
        summary=state.summary(hub.settings.zone),
    )


@router.get("/destinations", response_model=Destinations, tags=["destinations"],
            summary="Destinations with their hold (operator or outage) and waiting jobs",
            description="core.queries.destination_states over Orthanc's modalities and .env's MODALITY_ lines, "
                        "as the app's Destinations page, `./orthanc destinations` and /metrics.")
def list_destinations(request: Request, caller: Annotated[Caller, Depends(viewer)]) -> Destinations:
    hub = hub_of(request)
    states, in_orthanc = destination_states(hub)
    return Destinations(destinations=[_destination(hub, s, in_orthanc) for s in states.values()],
                        orthanc_reachable=in_orthanc is not None)


@router.get("/destinations/{name}", response_model=Destination, responses=NOT_FOUND, tags=["destinations"],
            summary="One destination")
def get_destination(request: Request, name: DestinationName,
                    caller: Annotated[Caller, Depends(viewer)]) -> Destination:
    hub = hub_of(request)
    states, in_orthanc = destination_states(hub)
    if name not in states:
        raise HTTPException(404, f"no destination {name!r}: not in Orthanc or .env, not held, no jobs")
    return _destination(hub, states[name], in_orthanc)
