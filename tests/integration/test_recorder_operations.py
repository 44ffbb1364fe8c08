"""Recording functions and operator actions against a real migrated PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from core import recorder
from core.db import metadata
from core.operations import OperationError, cancel_job, resend_study, retry_dead_jobs, retry_job
from core.recorder import SeriesInfo, StudyInfo

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def test_core_tables_match_the_migrations(db):
    """core.db's Table objects mirror db/migrations; a drift would make queries lie."""
    def core_only(obj, name, type_, reflected, compare_to):  # QI tables and views live elsewhere
        return type_ != "table" or name in metadata.tables

    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_object": core_only}), metadata)
    structural = [d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")]
    assert structural == []


def make_study(conn, uid: str = "1.2.3") -> tuple[int, list[int]]:
    study_id = recorder.upsert_study(conn, StudyInfo(uid, accession_number="A1"), source_aet="CT1", received_at=T0)
    ids = []
    for n in range(2):
        sid, created = recorder.upsert_series(
            conn, study_id, SeriesInfo(f"{uid}.{n}", uid, orthanc_id=f"o{uid}{n}", first_received_at=T0),
            kind="original", linked_by=None)
        assert created
        ids.append(sid)
    return study_id, ids


def test_stage_timestamps_are_never_reset(db):
    with db.begin() as conn:
        study_id, _ = make_study(conn)
        assert recorder.mark_study_stable(conn, study_id, T0 + timedelta(seconds=5))
        assert not recorder.mark_study_stable(conn, study_id, T0 + timedelta(seconds=50))
        recorder.upsert_study(conn, StudyInfo("1.2.3"), source_aet="CT9", received_at=T0 + timedelta(seconds=40))
        row = conn.execute(text("SELECT * FROM studies WHERE id = :i"), {"i": study_id}).mappings().one()
    assert row["stable_at"] == T0 + timedelta(seconds=5)
    assert row["last_stable_at"] == T0 + timedelta(seconds=50)
    assert row["first_received_at"] == T0 and row["source_aet"] == "CT1"


def test_a_series_is_queued_once_per_destination_unless_resent(db):
    with db.begin() as conn:
        study_id, series_ids = make_study(conn)
        args = dict(study_id=study_id, purpose="delivery", payload="matched", rule_name="r", at=T0)
        first = recorder.queue_job(conn, destination="PACS", series_ids=series_ids, **args)
        again = recorder.queue_job(conn, destination="PACS", series_ids=series_ids, **args)
        other = recorder.queue_job(conn, destination="PACS2", series_ids=series_ids[:1], **args)
        resent = resend_study(conn, study_id, "PACS", actor="alice", source="ui")
        counts = conn.execute(text("SELECT job_id, count(*) FROM job_series GROUP BY job_id ORDER BY job_id")).all()
    assert first is not None and again is None and other is not None and resent not in (first, other)
    assert [n for _, n in counts] == [2, 1, 2]


def test_retry_cancel_and_bulk_retry_are_audited(db):
    with db.begin() as conn:
        study_id, series_ids = make_study(conn)
        job = recorder.queue_job(conn, study_id=study_id, purpose="delivery", destination="PACS",
                                 series_ids=series_ids, payload="matched", rule_name="r", at=T0)
        recorder.job_started(conn, job, orthanc_job_id="oj-1", at=T0)
        recorder.job_failed(conn, job, at=T0, error="refused", error_code=9, retry_at=None)
        assert conn.execute(text("SELECT status FROM studies WHERE id = :i"), {"i": study_id}).scalar() == "failed"
        with pytest.raises(OperationError, match="only queued, failed or dead jobs can be cancelled"):
            conn.execute(text("UPDATE routing_jobs SET state = 'sending' WHERE id = :i"), {"i": job})
            cancel_job(conn, job, actor="bob", source="cli")
        conn.execute(text("UPDATE routing_jobs SET state = 'dead' WHERE id = :i"), {"i": job})
        retry_job(conn, job, actor="alice", source="ui")
        state = conn.execute(text("SELECT state, attempts FROM routing_jobs WHERE id = :i"), {"i": job}).one()
        assert tuple(state) == ("queued", 0)
        with pytest.raises(OperationError, match="only failed, dead or cancelled"):
            retry_job(conn, job, actor="alice", source="ui")
        cancel_job(conn, job, actor="bob", source="cli")
        conn.execute(text("UPDATE routing_jobs SET state = 'dead' WHERE id = :i"), {"i": job})
        assert retry_dead_jobs(conn, [job], actor="carol", source="ui") == 1
        with pytest.raises(OperationError, match="does not exist"):
            retry_job(conn, 999999, actor="x", source="ui")
        audit = conn.execute(text("SELECT actor, source, action, before, after FROM audit_log ORDER BY id")).all()
        events = [r.type for r in conn.execute(text("SELECT type FROM events WHERE job_id = :i ORDER BY id"),
                                                {"i": job})]
    assert [(a.actor, a.source, a.action) for a in audit] == [
        ("alice", "ui", "job.retry"), ("bob", "cli", "job.cancel"), ("carol", "ui", "job.retry")]
    assert audit[0].before == {"state": "dead", "attempts": 1} and audit[0].after == {"state": "queued"}
    assert events == ["delivery_queued", "delivery_started", "delivery_dead", "manual_retry", "cancelled",
                      "manual_retry"]


def test_ai_result_links_by_uid_then_accession(db):
    with db.begin() as conn:
        study_id, _ = make_study(conn, "9.9")
        assert recorder.find_study_for_ai_result(conn, "9.9", None) == (study_id, "study_uid")
        assert recorder.find_study_for_ai_result(conn, "other.uid", "A1") == (study_id, "accession")
        assert recorder.find_study_for_ai_result(conn, "other.uid", "nope") is None
