"""Study flows for the app tests and the benchmark, written with the worker's recorder.

Each helper performs the same sequence of recorder calls the worker makes for that
flow (arrival, stability, routing, sends, outcomes), so the pages are tested against
rows exactly as the worker writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection

from core import recorder
from core.recorder import SeriesInfo, StudyInfo
from core.states import EventType, LinkedBy, Payload, Purpose, SeriesKind

AI = "MERCURE"


@dataclass
class Flow:
    """What a seeded study consists of, for assertions."""

    study_id: int
    study_uid: str
    accession: str
    series_ids: list[int] = field(default_factory=list)
    ai_series_ids: list[int] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)


def arrive(
    conn: Connection, n: int, at: datetime, *, description: str = "XR CHEST 2 VIEWS", modality: str = "CR",
    source_aet: str = "MODALITY1", patient_name: str | None = None, patient_id: str | None = None,
    orthanc_id: str | None = None, series_orthanc_id: str | None = None, uid_prefix: str = "1.2.826.0.1.3680043.10.1",
) -> Flow:
    """A study's first series arrives and becomes stable (recorded like worker.ingest/tailer)."""
    study_uid = f"{uid_prefix}.{n}"
    accession = f"ACC{n:07d}"
    study = StudyInfo(
        study_uid=study_uid, orthanc_id=orthanc_id, patient_id=patient_id or f"PID{n:06d}",
        patient_name=patient_name or f"PATIENT^NUMBER{n}", accession_number=accession, description=description,
        study_date=at.strftime("%Y%m%d"), study_time=at.strftime("%H%M%S"),
    )
    study_id = recorder.upsert_study(conn, study, source_aet=source_aet, received_at=at)
    info = SeriesInfo(
        series_uid=f"{study_uid}.1", study_uid=study_uid, orthanc_id=series_orthanc_id, modality=modality,
        description=description, series_number="1", sender_aet=source_aet, instance_count=2,
        first_received_at=at, last_received_at=at + timedelta(seconds=1),
    )
    series_id, _ = recorder.upsert_series(conn, study_id, info, kind=SeriesKind.ORIGINAL, linked_by=None)
    recorder.add_event(conn, study_id, EventType.RECEIVED, at, series_id=series_id,
                       detail={"sender": source_aet, "modality": modality})
    stable = at + timedelta(seconds=6)
    recorder.mark_series_stable(conn, series_id, stable)
    recorder.mark_study_stable(conn, study_id, stable)
    recorder.add_event(conn, study_id, EventType.STABLE, stable, detail={"first": True})
    recorder.refresh_study_status(conn, study_id)
    return Flow(study_id, study_uid, accession, [series_id])


def route(conn: Connection, flow: Flow, at: datetime, destination: str, *, purpose: str = Purpose.DELIVERY,
          series_ids: list[int] | None = None, rule: str = "test-rule") -> int:
    """Queue one job as worker.router does (rule_matched, series routed)."""
    ids = series_ids or flow.series_ids
    job_id = recorder.queue_job(conn, study_id=flow.study_id, purpose=purpose, destination=destination,
                                series_ids=ids, payload=Payload.STUDY if purpose == Purpose.AI else Payload.MATCHED,
                                rule_name=rule, at=at)
    assert job_id is not None
    recorder.add_event(conn, flow.study_id, EventType.RULE_MATCHED, at, detail={"rules": [rule]})
    recorder.mark_series_routed(conn, ids, at)
    recorder.refresh_study_status(conn, flow.study_id)
    flow.jobs[f"{purpose}:{destination}"] = job_id
    return job_id


def send_ok(conn: Connection, job_id: int, at: datetime, instances: int = 2) -> None:
    recorder.job_started(conn, job_id, orthanc_job_id=f"orthanc-job-{job_id}", at=at)
    recorder.job_succeeded(conn, job_id, at=at + timedelta(seconds=2), instances_sent=instances)


def send_fail(conn: Connection, job_id: int, at: datetime, *, error: str, retry_at: datetime | None) -> None:
    recorder.job_started(conn, job_id, orthanc_job_id=f"orthanc-job-{job_id}", at=at)
    recorder.job_failed(conn, job_id, at=at + timedelta(seconds=1), error=error, error_code=9, retry_at=retry_at)


def ai_result(conn: Connection, flow: Flow, at: datetime, *, description: str = "QA VISUALIZATION",
              modality: str = "OT", number: int = 2) -> int:
    """An AI result series from MERCURE, linked by StudyInstanceUID (as worker.ingest)."""
    info = SeriesInfo(
        series_uid=f"{flow.study_uid}.{number}", study_uid=flow.study_uid, modality=modality,
        description=description, series_number=str(1000 + number), sender_aet=AI, instance_count=1,
        first_received_at=at, last_received_at=at,
    )
    series_id, _ = recorder.upsert_series(conn, flow.study_id, info, kind=SeriesKind.AI_RESULT,
                                          linked_by=LinkedBy.STUDY_UID)
    recorder.add_event(conn, flow.study_id, EventType.AI_RESULT_RECEIVED, at, series_id=series_id,
                       detail={"sender": AI, "linked_by": LinkedBy.STUDY_UID, "modality": modality})
    recorder.mark_series_stable(conn, series_id, at + timedelta(seconds=5))
    recorder.refresh_study_status(conn, flow.study_id)
    flow.ai_series_ids.append(series_id)
    return series_id


def delivered_ai_study(conn: Connection, n: int, at: datetime, **kw: object) -> Flow:
    """The full leg-length flow: received, sent to the AI, results back, routed to two routers."""
    flow = arrive(conn, n, at, description="EXTREMITY BILATERAL BONE LENGTH", **kw)  # type: ignore[arg-type]
    ai_job = route(conn, flow, at + timedelta(seconds=7), AI, purpose=Purpose.AI, rule="leg-length-to-ai")
    send_ok(conn, ai_job, at + timedelta(seconds=8))
    result = ai_result(conn, flow, at + timedelta(seconds=60))
    for dest in ("LPCHROUTER", "LPCHTROUTER"):
        job = route(conn, flow, at + timedelta(seconds=66), dest, series_ids=[result],
                    rule="ai-qa-visualization-to-routers")
        send_ok(conn, job, at + timedelta(seconds=67))
    return flow


def standard_set(conn: Connection, now: datetime, base: int = 0) -> dict[str, Flow]:
    """One study in each state the pages distinguish (numbers base+1 .. base+7)."""
    t = now - timedelta(minutes=30)
    flows: dict[str, Flow] = {}
    flows["delivered"] = delivered_ai_study(conn, base + 1, t, patient_name="DOE^JANE", patient_id="PID-JANE")
    pending = arrive(conn, base + 2, t + timedelta(minutes=1), description="BONE LENGTH STUDY")
    send_ok(conn, route(conn, pending, t + timedelta(minutes=1, seconds=7), AI, purpose=Purpose.AI),
            t + timedelta(minutes=1, seconds=8))
    flows["ai_pending"] = pending
    dead = arrive(conn, base + 3, t + timedelta(minutes=2), modality="CT", description="CT HEAD")
    send_fail(conn, route(conn, dead, t + timedelta(minutes=2, seconds=7), "LPCHROUTER"),
              t + timedelta(minutes=2, seconds=8), error="DicomAssociation - connection refused", retry_at=None)
    flows["dead"] = dead
    retrying = arrive(conn, base + 4, t + timedelta(minutes=3), source_aet="MODALITY2")
    send_fail(conn, route(conn, retrying, t + timedelta(minutes=3, seconds=7), "MODLINK"),
              t + timedelta(minutes=3, seconds=8), error="timeout", retry_at=now + timedelta(minutes=10))
    flows["retrying"] = retrying
    queued = arrive(conn, base + 5, t + timedelta(minutes=4))
    route(conn, queued, t + timedelta(minutes=4, seconds=7), "LPCHROUTER")
    flows["queued"] = queued
    unrouted = arrive(conn, base + 6, t + timedelta(minutes=5), description="US ABDOMEN", modality="US")
    recorder.add_event(conn, unrouted.study_id, EventType.UNROUTED, t + timedelta(minutes=5, seconds=7),
                       detail={"reason": "no rule matched"})
    recorder.refresh_study_status(conn, unrouted.study_id)
    flows["unrouted"] = unrouted
    overdue = arrive(conn, base + 7, t + timedelta(minutes=6), description="BONE LENGTH")
    send_ok(conn, route(conn, overdue, t + timedelta(minutes=6, seconds=7), AI, purpose=Purpose.AI),
            t + timedelta(minutes=6, seconds=8))
    recorder.add_event(conn, overdue.study_id, EventType.AI_OVERDUE, now - timedelta(minutes=1),
                       detail={"timeout_s": 1800})
    recorder.refresh_study_status(conn, overdue.study_id)
    flows["ai_overdue"] = overdue
    return flows


def upload(rest: object, datasets: list) -> tuple[str, dict[str, str]]:
    """POST synthetic datasets to Orthanc; return its study id and series ids by SeriesInstanceUID."""
    from io import BytesIO

    from pydicom import dcmwrite

    study_id = ""
    series: dict[str, str] = {}
    for ds in datasets:
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        answer = rest.post("/instances", buffer.getvalue())  # type: ignore[attr-defined]
        study_id = answer["ParentStudy"]
        series[str(ds.SeriesInstanceUID)] = answer["ParentSeries"]
    return study_id, series
