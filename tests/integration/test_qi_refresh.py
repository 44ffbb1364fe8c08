"""The QI caches: triggers mark studies dirty, qi_refresh recomputes them, and no race
between the worker's writes and a refresh can leave a stale cached row behind."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import Connection, Engine, text

from core import qi, recorder
from core.db import make_engine
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration


def cache_matches_live(conn: Connection) -> None:
    for cached, live in (("qi_study_fact", "qi_study_live"), ("qi_delivery_fact", "qi_delivery_live")):
        for a, b in ((cached, live), (live, cached)):
            diff = conn.execute(text(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) d"))
            assert diff.scalar_one() == 0, f"{a} has rows that {b} has not"


def dirty(conn: Connection) -> set[int]:
    return set(conn.execute(text("SELECT study_id FROM qi_dirty")).scalars())


def test_recorder_writes_mark_studies_dirty_and_refresh_caches_them(db: Engine) -> None:
    with db.begin() as conn:
        studies = qi_fixture.build(conn)
    with db.begin() as conn:
        assert dirty(conn) >= {s.study_id for s in studies.values()}
        assert qi.refresh(conn, limit=3) == 3  # in batches
        assert qi.refresh_all(conn) == 7
        assert dirty(conn) == set()
        cache_matches_live(conn)
    # a later change (a retried delivery succeeding) marks just that study
    s3 = studies["S3"]
    with db.begin() as conn:
        operations_retry = conn.execute(text("SELECT id FROM routing_jobs WHERE study_id = :s"),
                                        {"s": s3.study_id}).scalar_one()
        recorder.job_started(conn, operations_retry, orthanc_job_id="again", at=datetime.now(UTC))
        recorder.job_succeeded(conn, operations_retry, at=datetime.now(UTC), instances_sent=3)
    with db.begin() as conn:
        assert dirty(conn) == {s3.study_id}
        # the view is current before the refresh ...
        assert conn.execute(text("SELECT outcome FROM qi_study WHERE study_id = :s"),
                            {"s": s3.study_id}).scalar_one() == "delivered"
        assert conn.execute(text("SELECT outcome FROM qi_study_fact WHERE study_id = :s"),
                            {"s": s3.study_id}).scalar_one() == "failed"
        assert qi.refresh(conn) == 1
        cache_matches_live(conn)


def test_rebuild_and_deleted_studies(db: Engine) -> None:
    with db.begin() as conn:
        studies = qi_fixture.build(conn)
        assert qi.rebuild(conn) == 9
        assert dirty(conn) == set()
        cache_matches_live(conn)
    with db.begin() as conn:
        conn.execute(text("DELETE FROM studies WHERE id = :s"), {"s": studies["S5"].study_id})
    with db.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM qi_study")).scalar_one() == 8
        qi.refresh_all(conn)
        assert conn.execute(text("SELECT count(*) FROM qi_study_fact")).scalar_one() == 8
        cache_matches_live(conn)


def test_a_write_in_flight_during_a_refresh_stays_dirty(db: Engine) -> None:
    with db.begin() as conn:
        studies = qi_fixture.build(conn)
        qi.refresh_all(conn)
    s4 = studies["S4"]
    at = datetime(2026, 3, 8, 18, 30, tzinfo=UTC)
    with db.connect() as writer, db.connect() as refresher:
        writer.begin()
        # the worker records the AI result of S4, and has not committed yet
        info = recorder.SeriesInfo(series_uid=f"{s4.uid}.95", study_uid=s4.uid, sender_aet="MERCURE",
                                   first_received_at=at, last_received_at=at)
        recorder.upsert_series(writer, s4.study_id, info, kind="ai_result", linked_by="study_uid")
        with refresher.begin():
            # its dirty row is locked: skipped, not recomputed from the old data
            assert qi.refresh(refresher) == 0
        writer.commit()
    with db.begin() as conn:
        assert dirty(conn) == {s4.study_id}
        assert conn.execute(text("SELECT ai_round_trip_s FROM qi_study WHERE study_id = :s"),
                            {"s": s4.study_id}).scalar_one() == 1770
        qi.refresh(conn)
        cache_matches_live(conn)


def test_a_write_during_an_uncommitted_refresh_waits_and_stays_dirty(db: Engine) -> None:
    with db.begin() as conn:
        studies = qi_fixture.build(conn)
    s4 = studies["S4"]
    at = datetime(2026, 3, 8, 18, 40, tzinfo=UTC)
    done = threading.Event()

    def worker_write() -> None:
        with db.begin() as conn:
            info = recorder.SeriesInfo(series_uid=f"{s4.uid}.96", study_uid=s4.uid, sender_aet="MERCURE",
                                       first_received_at=at, last_received_at=at)
            recorder.upsert_series(conn, s4.study_id, info, kind="ai_result", linked_by="study_uid")
        done.set()

    with db.connect() as refresher:
        refresher.begin()
        assert qi.refresh(refresher) == 10  # holds the deleted dirty rows until commit
        thread = threading.Thread(target=worker_write)
        thread.start()
        assert not done.wait(1.0)  # the worker's trigger waits for the refresh to commit
        with db.begin() as other:
            assert qi.refresh(other) == 0  # a concurrent refresher backs off
        refresher.commit()
        thread.join(timeout=30)
        assert done.is_set()
    with db.begin() as conn:
        assert dirty(conn) == {s4.study_id}
        assert conn.execute(text("SELECT ai_result_at FROM qi_study WHERE study_id = :s"),
                            {"s": s4.study_id}).scalar_one() == at
        qi.refresh(conn)
        cache_matches_live(conn)
        assert conn.execute(text("SELECT ai_round_trip_s FROM qi_study_fact WHERE study_id = :s"),
                            {"s": s4.study_id}).scalar_one() == (at - datetime(2026, 3, 8, 18, 0, 30,
                                                                                 tzinfo=UTC)) / timedelta(seconds=1)


def test_grafana_role_reads_views_but_not_tables(db: Engine, qi_db: QiDatabase) -> None:
    with db.begin() as conn:
        qi_fixture.build(conn)
        assert qi.grant_read_access(conn) is True
        assert qi.grant_read_access(conn, "no_such_role") is False
    reader = make_engine(grafana_url(qi_db))
    with reader.connect() as conn, conn.begin():
        assert conn.execute(text("SELECT current_user")).scalar_one() == "grafana_ro"
        assert conn.execute(text("SELECT count(*) FROM qi_study")).scalar_one() == 9
        assert conn.execute(text("SELECT count(*) FROM qi_stage_stats(NULL, NULL, 'all')")).scalar_one() > 0
        for relation in ("studies", "qi_study_fact", "events"):
            with pytest.raises(Exception, match="permission denied"), conn.begin_nested():
                conn.execute(text(f"SELECT 1 FROM {relation} LIMIT 1"))
        columns = set(conn.execute(text("SELECT * FROM qi_study LIMIT 1")).keys())
        assert not {"patient_name", "patient_id"} & columns
    reader.dispose()


def grafana_url(qi_db: QiDatabase) -> str:
    """The QI database as Grafana's datasource sees it (user grafana_ro)."""
    s = qi_db.settings
    password = quote(s.grafana_db_password.get_secret_value(), safe="")
    return f"postgresql+psycopg://grafana_ro:{password}@{s.postgres_host}:{s.postgres_port}/{qi_db.name}"
