"""A batch of jobs sent as one Orthanc store job is recorded in one statement per step,
with the same rows the job-by-job functions write (the dispatcher relies on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from core import recorder
from core.recorder import SeriesInfo, StudyInfo

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def make_jobs(conn, prefix: str) -> tuple[list[int], list[int]]:
    """Two studies: the first with an AI job and a delivery job, the second with a delivery job."""
    studies, jobs = [], []
    for n, purposes in enumerate((("ai", "delivery"), ("delivery",))):
        uid = f"{prefix}.{n}"
        study_id = recorder.upsert_study(conn, StudyInfo(uid), source_aet="CT1", received_at=T0)
        series_id, _ = recorder.upsert_series(conn, study_id, SeriesInfo(f"{uid}.1", uid, orthanc_id=f"o{uid}"),
                                              kind="original", linked_by=None)
        studies.append(study_id)
        for purpose in purposes:
            jobs.append(recorder.queue_job(conn, study_id=study_id, purpose=purpose,
                                           destination="MERCURE" if purpose == "ai" else "PACS",
                                           series_ids=[series_id], payload="study", rule_name="r", at=T0))
    return studies, jobs


def recorded(conn, studies: list[int], jobs: list[int]) -> dict:
    """What the QI views read, with ids replaced by positions so two sets compare equal."""
    position = {job: i for i, job in enumerate(jobs)}
    events = conn.execute(text(
        "SELECT job_id, type, at, destination, detail FROM events "
        "WHERE job_id = ANY(:jobs) AND type <> 'delivery_queued' ORDER BY id"), {"jobs": jobs}).all()
    rows = conn.execute(text(
        "SELECT id, state, attempts, orthanc_job_id, started_at, finished_at, instances_sent, claimed_by "
        "FROM routing_jobs WHERE id = ANY(:jobs) ORDER BY id"), {"jobs": jobs}).all()
    statuses = conn.execute(text("SELECT status FROM studies WHERE id = ANY(:s) ORDER BY id"),
                            {"s": studies}).scalars().all()
    return {"events": [(position[e.job_id], e.type, e.at, e.destination, e.detail) for e in events],
            "jobs": [(position[r.id], *r[1:]) for r in rows], "statuses": statuses}


def test_a_batch_is_recorded_like_its_jobs_one_by_one(db):
    started, done = T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)
    with db.begin() as conn:
        one_studies, one_jobs = make_jobs(conn, "1.2.1")
        for job in one_jobs:
            recorder.job_started(conn, job, orthanc_job_id="oj", at=started)
        for job in one_jobs:
            recorder.job_succeeded(conn, job, at=done, instances_sent=None)
        batch_studies, batch_jobs = make_jobs(conn, "1.2.2")
        recorder.jobs_started(conn, batch_jobs, orthanc_job_id="oj", at=started)
        recorder.jobs_succeeded(conn, batch_jobs, at=done, instances_sent=None)
        one_by_one = recorded(conn, one_studies, one_jobs)
        batch = recorded(conn, batch_studies, batch_jobs)

    assert batch == one_by_one
    assert [(job, kind, detail) for job, kind, _, _, detail in batch["events"]] == [
        (0, "delivery_started", {"attempt": 1, "orthanc_job": "oj"}),
        (1, "delivery_started", {"attempt": 1, "orthanc_job": "oj"}),
        (2, "delivery_started", {"attempt": 1, "orthanc_job": "oj"}),
        (0, "ai_sent", {"instances": None}),
        (1, "delivered", {"instances": None}),
        (2, "delivered", {"instances": None}),
    ]
    assert [row[1:] for row in batch["jobs"]] == [("succeeded", 1, "oj", started, done, None, None)] * 3
    # The AI job succeeded but no result came back yet; the second study is fully delivered.
    assert batch["statuses"] == ["ai_pending", "delivered"]


def test_a_second_success_of_the_same_job_records_nothing(db):
    """Two workers may follow one Orthanc job; the job still gets one outcome event."""
    with db.begin() as conn:
        _, jobs = make_jobs(conn, "1.2.3")
        recorder.jobs_started(conn, jobs, orthanc_job_id="oj", at=T0)
        recorder.jobs_succeeded(conn, jobs, at=T0 + timedelta(seconds=2), instances_sent=None)
        recorder.jobs_succeeded(conn, jobs, at=T0 + timedelta(seconds=3), instances_sent=None)
        outcomes = conn.execute(text(
            "SELECT job_id, count(*) FROM events WHERE job_id = ANY(:jobs) AND type IN ('delivered', 'ai_sent') "
            "GROUP BY job_id"), {"jobs": jobs}).all()
        finished = set(conn.execute(text("SELECT finished_at FROM routing_jobs WHERE id = ANY(:jobs)"),
                                    {"jobs": jobs}).scalars())
    assert sorted(n for _, n in outcomes) == [1] * len(jobs)
    assert finished == {T0 + timedelta(seconds=2)}
