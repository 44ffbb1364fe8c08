"""What the API answers: one pydantic model per kind of document (they make docs/openapi.json).

A response model is also a filter: only the fields named here leave the process, so a
column added to a core/queries.py query does not reach API clients until it is added
(and reviewed) here. Patient names and ids are fields of `Study` and `StudyInfo` only,
and hold `•••` unless the token's role is operator or admin (api/access.py).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# The QI vocabularies of core/qi.py (tests/unit/test_api_schema.py checks they agree).
Grain = Literal["day", "week", "month", "all"]
Group = Literal["none", "modality", "source_aet", "destination", "rule"]
StageName = Literal["wait_stable", "to_ai", "ai_round_trip", "result_settle", "to_destinations", "turnaround"]
ResendKind = Literal["all", "original", "ai_result"]

MASKED = "'•••' unless the token's role is operator or admin (as in the app)"


class Problem(BaseModel):
    """Every refusal: 400, 401, 403, 404, 409, 503 (and 500, which says nothing more)."""

    detail: str = Field(description="What was wrong, in one sentence; never patient data the caller did not send")


class Stage(BaseModel):
    name: str = Field(description="Study Received, Sent to <AI node>, AI Results Back, Routed to Destinations")
    at: datetime | None = Field(description="when the stage was reached; null while pending")
    note: str = ""


class Study(BaseModel):
    """One row of the study list (core.queries.search_studies) with its stages."""

    id: int
    study_uid: str
    first_received_at: datetime | None
    accession_number: str | None
    patient_name: str | None = Field(description=MASKED)
    patient_id: str | None = Field(description=MASKED)
    modalities: str | None = Field(description="modalities of the original series, '\\'-separated")
    description: str | None
    source_aet: str | None
    status: str
    series: int
    destinations: list[str] = Field(description="every destination the study has a routing job for")
    stages: list[Stage]


class StudyPage(BaseModel):
    studies: list[Study] = Field(description="newest arrival first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null on the last page")


class StudyMatches(BaseModel):
    ids: list[int] = Field(description="matching study ids, newest first (at most 20 per kind of key)")


class StudyInfo(BaseModel):
    id: int
    study_uid: str
    orthanc_id: str | None
    patient_name: str | None = Field(description=MASKED)
    patient_id: str | None = Field(description=MASKED)
    accession_number: str | None
    modalities: str | None
    description: str | None
    study_date: str | None
    study_time: str | None
    source_aet: str | None
    first_received_at: datetime | None
    last_received_at: datetime | None
    stable_at: datetime | None
    last_stable_at: datetime | None
    status: str
    orphan_ai_result: bool
    updated_at: datetime | None


class Series(BaseModel):
    id: int
    series_uid: str
    orthanc_id: str | None
    kind: str
    linked_by: str | None
    sender_aet: str | None
    modality: str | None
    description: str | None
    series_number: str | None
    instance_count: int | None
    first_received_at: datetime | None
    last_received_at: datetime | None
    stable_at: datetime | None
    routed_at: datetime | None


class StudyJob(BaseModel):
    id: int
    purpose: str
    destination: str
    rule_name: str | None
    payload: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    orthanc_job_id: str | None
    last_error: str | None
    last_error_code: int | None
    instances_sent: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    series: int
    resend: bool | None


class StudyDetail(BaseModel):
    study: StudyInfo
    stages: list[Stage]
    series: list[Series]
    jobs: list[StudyJob]


class Event(BaseModel):
    id: int
    at: datetime
    type: str
    destination: str | None
    job_id: int | None
    series_id: int | None
    series_uid: str | None
    detail: dict[str, Any] | None


class Timeline(BaseModel):
    study_id: int
    status: str
    stages: list[Stage]
    events: list[Event] = Field(description="in the order they were recorded")


class Job(BaseModel):
    id: int
    study_id: int
    accession_number: str | None
    purpose: str
    destination: str
    rule_name: str | None
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    last_error_code: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None


class JobDetail(Job):
    payload: str
    instances_sent: int | None


class JobPage(BaseModel):
    jobs: list[Job] = Field(description="newest first")
    next_before_id: int | None = Field(description="pass as `before_id` for the next page; null on the last page")
    counts: dict[str, int] = Field(description="jobs per state (all but succeeded), whatever the filters")


class Destination(BaseModel):
    """core.queries.destination_states: the one definition of a destination's hold."""

    name: str
    ai_node: bool = Field(description="the AI node (AI_MODALITY)")
    in_orthanc: bool | None = Field(description="a modality in Orthanc; null when Orthanc did not answer")
    held: bool
    kind: Literal["operator", "outage"] | None
    held_at: datetime | None
    held_by: str | None
    reason: str | None
    held_for_s: float | None
    jobs_waiting: int = Field(description="queued, failed (waiting to retry) or being sent")
    last_error: str | None
    next_probe_at: datetime | None
    summary: str | None = Field(description="'outage since 14:05, 3 jobs waiting', as every surface says it")


class Destinations(BaseModel):
    destinations: list[Destination]
    orthanc_reachable: bool


class QiRows(BaseModel):
    """The rows of one core/qi.py function, column for column (docs/qi.md says what each means)."""

    report: str
    start: date
    end: date
    rows: list[dict[str, Any]] = Field(description="times in ISO 8601, durations in seconds; null for no value")


class QiDefinitions(BaseModel):
    definitions: dict[str, str]
    settings: dict[str, Any] = Field(description="the thresholds and time zone the SQL views use now")
    filter_options: dict[str, list[str]] | None = None


class Caller(BaseModel):
    name: str = Field(description="the token's name: the actor of every change made with it")
    role: str
    sees_patient_data: bool


class Done(BaseModel):
    message: str
    job_id: int | None = Field(default=None, description="the new job of a resend")


class HoldRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                               description="shown with the hold and in the audit log")


class ResendRequest(BaseModel):
    destination: str = Field(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
                             description="a modality defined in Orthanc")
    kind: ResendKind = Field(default="all", description="which series: every one, originals or AI results")
