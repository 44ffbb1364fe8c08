"""A study's events are listed in the order they were recorded (events.id), which is causal.

Orthanc's times are whole seconds (a job that completed at 12:00:05.9 is written
12:00:05) while the worker's own events carry fractions (queued at 12:00:05.3), so
sorting by `at` listed `ai_sent` before the `delivery_queued` it follows and
`delivered` before its `delivery_started`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from core import queries, recorder
from testkit.harness.worker_proc import event_types
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration
T0 = datetime(2026, 4, 14, 12, 0, 0, tzinfo=UTC)
UID_ROOT = "1.2.826.0.1.3680043.10.81"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_events_in_one_second_are_listed_in_causal_order(db: Engine) -> None:
    # Each step in its own transaction, after the previous one committed: a causal chain,
    # as the tailer and the dispatcher write it.
    with db.begin() as conn:
        study = qi_fixture.Recorder(conn, UID_ROOT).arrive("E1", at(0), modality="CR", source="MOD_A", wait_s=5)
    with db.begin() as conn:
        ai = recorder.queue_job(conn, study_id=study.study_id, purpose="ai", destination="MERCURE",
                                series_ids=study.series, payload="study", rule_name="r", at=at(5.3))
        assert ai is not None
    with db.begin() as conn:
        recorder.job_started(conn, ai, orthanc_job_id="oj-1", at=at(5.4))
    with db.begin() as conn:  # Orthanc's CompletionTime, truncated to its second
        recorder.job_succeeded(conn, ai, at=at(5), instances_sent=1)
    with db.begin() as conn:
        job = recorder.queue_job(conn, study_id=study.study_id, purpose="delivery", destination="PACS",
                                 series_ids=study.series, payload="matched", rule_name="r", at=at(7.1))
        assert job is not None
    with db.begin() as conn:
        recorder.job_started(conn, job, orthanc_job_id="oj-2", at=at(7.2))
    with db.begin() as conn:
        recorder.job_succeeded(conn, job, at=at(7), instances_sent=1)
    with db.begin() as conn:  # the same `at` as the event before it
        recorder.add_event(conn, study.study_id, "manual_retry", at(7), job_id=job, destination="PACS")

    recorded = ["received", "stable", "delivery_queued", "delivery_started", "ai_sent",
                "delivery_queued", "delivery_started", "delivered", "manual_retry"]
    with db.connect() as conn:
        events = queries.study_events(conn, study.study_id)
        by_time = conn.execute(text("SELECT type FROM events WHERE study_id = :s ORDER BY at, id"),
                               {"s": study.study_id}).scalars().all()
    assert [e["type"] for e in events] == recorded
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert by_time != recorded  # what the old order showed: ai_sent before its delivery_queued, ...
    assert by_time.index("ai_sent") < by_time.index("delivery_queued")
    assert [t for t, _ in event_types(db, study.uid)] == recorded  # the test harness lists them alike


def test_the_event_sequence_hands_out_ids_in_call_order(db: Engine) -> None:
    """Id order is causal only while every session draws from one sequence counter:
    a sequence CACHE above 1 would give each session its own block of ids."""
    with db.connect() as conn:
        cache = conn.execute(text(
            "SELECT seqcache FROM pg_sequence WHERE seqrelid = pg_get_serial_sequence('events', 'id')::regclass"
        )).scalar_one()
    assert cache == 1
