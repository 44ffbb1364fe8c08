"""Two dispatcher defects the soak found, pinned against a real PostgreSQL.

1. A send whose outcome (or release) could not be written left its jobs `sending`
   and claimed by a worker that is still alive, so no worker ever adopted them: the
   soak ended with jobs that never became final.
2. The dispatcher's writes deadlock with the tailer's on the QI dirty marks
   (trigger-maintained qi_dirty rows, locked until commit, taken in no common order).
   PostgreSQL aborts one side; an aborted `job_started` lost the Orthanc job id of a
   store already under way, and the batch was sent a second time.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from core import recorder
from core.recorder import SeriesInfo, StudyInfo
from worker.dispatcher import Dispatcher

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def queued_job(conn, uid: str) -> int:
    study_id = recorder.upsert_study(conn, StudyInfo(uid), source_aet="CT1", received_at=T0)
    series_id, _ = recorder.upsert_series(conn, study_id, SeriesInfo(f"{uid}.1", uid, orthanc_id=f"o{uid}"),
                                          kind="original", linked_by=None)
    job_id = recorder.queue_job(conn, study_id=study_id, purpose="delivery", destination="PACS",
                                series_ids=[series_id], payload="matched", rule_name="r", at=T0)
    assert job_id is not None
    return job_id


def live_dispatcher(db, qi_db, worker_id: str = "w1") -> Dispatcher:
    with db.begin() as conn:
        conn.execute(text("INSERT INTO worker_heartbeats (worker_id, hostname, pid, started_at, heartbeat_at) "
                          "VALUES (:w, 'h', 1, now(), now())"), {"w": worker_id})
    return Dispatcher(qi_db.settings, db, orthanc=None, worker_id=worker_id)  # type: ignore[arg-type]


def test_own_sending_jobs_not_in_flight_are_adopted(db, qi_db):
    dispatcher = live_dispatcher(db, qi_db)
    with db.begin() as conn:
        stranded, running = queued_job(conn, "1.1"), queued_job(conn, "1.2")
        conn.execute(text("UPDATE routing_jobs SET state = 'sending', claimed_by = 'w1', orthanc_job_id = 'oj' "
                          "WHERE id IN (:a, :b)"), {"a": stranded, "b": running})
    dispatcher.inflight.add(running)  # still being polled by one of our threads
    claimed = dispatcher.claim(10)
    assert [(j.id, j.orthanc_job_id) for j in claimed] == [(stranded, "oj")]  # adopted: polled, not resent


def test_a_deadlocked_write_is_redone(db, qi_db):
    """Hold study B's dirty mark, let the dispatcher take A's then wait for B, then ask for A:
    PostgreSQL aborts one side. The dispatcher's side must still commit."""
    dispatcher = live_dispatcher(db, qi_db)
    with db.begin() as conn:
        job_a, job_b = queued_job(conn, "2.1"), queued_job(conn, "2.2")
        study_a = conn.execute(text("SELECT study_id FROM routing_jobs WHERE id = :j"), {"j": job_a}).scalar_one()
    other = db.connect()
    other.execute(text("UPDATE routing_jobs SET updated_at = now() WHERE id = :j"), {"j": job_b})  # locks B's mark
    done = threading.Event()

    def start_both(conn) -> None:
        for job in (job_a, job_b):  # A's mark, then B's: blocks on `other`
            recorder.job_started(conn, job, orthanc_job_id="oj", at=T0 + timedelta(seconds=1))
        done.set()

    thread = threading.Thread(target=lambda: dispatcher._write(start_both))
    thread.start()
    try:
        # Both sides use the default deadlock_timeout (1 s): the dispatcher, waiting first,
        # runs the deadlock check first and is the one PostgreSQL aborts.
        assert not done.wait(0.5), "the dispatcher's transaction should be waiting for B's mark"
        try:  # now close the cycle: one of the two transactions is aborted
            other.execute(text("UPDATE studies SET updated_at = now() WHERE id = :s"), {"s": study_a})
            other.commit()
        except Exception:
            other.rollback()
    finally:
        other.close()
        thread.join(30)
    assert done.is_set(), "the deadlocked job_started was not redone"
    with db.connect() as conn:
        rows = conn.execute(text("SELECT orthanc_job_id, attempts FROM routing_jobs WHERE id IN (:a, :b)"),
                            {"a": job_a, "b": job_b}).all()
    assert sorted(rows) == [("oj", 1), ("oj", 1)]
