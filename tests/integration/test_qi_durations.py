"""No QI duration is ever negative: each is measured from the attempt its evidence belongs to.

Fixture: tests/integration/qi_fixture.py `build_attempts` (an AI result answering an
attempt whose outcome Orthanc lost, the same within one second, an attempt start never
recorded, a result from elsewhere, originals delivered before the AI result exists),
next to the hand-computed `build` fixture. Revision 0006 defines these durations; the
revision before it (0002's views) gave negative ones on the same rows, which
`test_the_previous_definitions_went_negative_on_this_fixture` shows, so the fixture
does reproduce the defect. Every test runs on live rows (dirty studies) and on cached
ones (after a refresh), which must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, text

from core import qi
from core.db import alembic_config, make_engine, migrate
from core.qi import QiFilter
from testkit.harness.stack import PostgresServer, QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
EVERYTHING = QiFilter(date(2026, 1, 1), date(2027, 12, 31))
T0 = qi_fixture.ATTEMPTS_T0
PREVIOUS = "0005"  # the revision before 0006_attempt_durations


def duration_columns(conn: Connection, view: str) -> list[str]:
    """Every duration of a view: its columns named *_s (seconds), so a new one is covered too."""
    return list(conn.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = :v AND column_name LIKE '%\\_s' "
        "ORDER BY ordinal_position"), {"v": view}).scalars())


def minima(conn: Connection) -> dict[str, float | None]:
    """min() of every duration column of qi_study and qi_delivery, computed by PostgreSQL."""
    out: dict[str, float | None] = {}
    for view in ("qi_study", "qi_delivery"):
        columns = duration_columns(conn, view)
        assert columns, view
        row = conn.execute(text(
            f"SELECT {', '.join(f'min({c})' for c in columns)} FROM {view}")).one()  # noqa: S608 - catalog names
        out.update({f"{view}.{c}": v for c, v in zip(columns, row, strict=True)})
    return out


@pytest.fixture(params=["live", "cached"])
def db(request: pytest.FixtureRequest, qi_db: QiDatabase) -> Iterator[Engine]:
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        qi.sync_qi_settings(conn, qi_db.settings)
        qi_fixture.build(conn)
        qi_fixture.build_attempts(conn)
    with engine.begin() as conn:
        if request.param == "cached":
            assert qi.refresh_all(conn) == 16  # 9 + 6 studies and the orphan
        assert qi.dirty_count(conn) == (0 if request.param == "cached" else 16)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def conn(db: Engine) -> Iterator[Connection]:
    with db.connect() as connection, connection.begin():
        yield connection


def study(conn: Connection, n: int) -> dict:
    return dict(conn.execute(text("SELECT * FROM qi_study WHERE study_instance_uid = :u"),
                             {"u": f"{qi_fixture.ATTEMPTS_ROOT}.{n}"}).mappings().one())


def durations(row: dict) -> tuple:
    return (row["wait_stable_s"], row["to_ai_s"], row["ai_round_trip_s"], row["result_settle_s"],
            row["to_destinations_s"], row["turnaround_s"])


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_ai_result_is_measured_from_the_attempt_it_answers(conn: Connection) -> None:
    a1 = study(conn, 1)
    # the result (t+40) answers attempt 1 (started t+11.4), not the success of attempt 2 (t+101)
    assert (a1["ai_sent_at"], a1["ai_result_at"], a1["delivered_at"]) == (at(101), at(40), at(63))
    assert durations(a1) == (10, 91, 29, 20, 3, 63)
    assert (a1["ai_result_state"], a1["sla_ai_round_trip"], a1["outcome"]) == ("on_time", "met", "delivered")
    # attempt 1 started at t+1040.6 and the result came in that second: compared at whole seconds, 0 s
    assert durations(study(conn, 2)) == (10, 36, 0, 10, None, None)
    # the answered attempt's start was never recorded: from the AI job's queueing (t+2010.3 -> 2010)
    assert durations(study(conn, 3)) == (10, 41, 20, 10, None, None)
    # answering attempt 1 after 2100 s (> AI_RESULT_TIMEOUT): late, and listed with what it waited
    a6 = study(conn, 6)
    assert durations(a6) == (10, 2701, 2100, 10, None, None)
    assert (a6["ai_result_state"], a6["sla_ai_round_trip"]) == ("late", "breached")
    overdue = qi.ai_overdue_studies(conn, EVERYTHING, LA)
    assert overdue.set_index("accession_number").loc["ACC-A6", "waited_s"] == 2100


def test_a_result_before_the_hub_sent_anything_has_no_round_trip(conn: Connection) -> None:
    a4 = study(conn, 4)
    assert (a4["ai_result_at"], a4["ai_sent_at"]) == (at(3005), at(3012))
    assert durations(a4) == (10, 2, None, 3, None, None)
    assert (a4["ai_result_state"], a4["ai_overdue"], a4["sla_ai_round_trip"]) == ("on_time", False, None)


def test_originals_delivered_before_the_ai_result_count_as_delivered_once_it_is_stable(conn: Connection) -> None:
    a5 = study(conn, 5)
    # PACS got the originals at t+4015, the AI result was stable at t+4120: delivered then
    assert (a5["ready_at"], a5["delivered_at"], a5["outcome"]) == (at(4120), at(4120), "delivered")
    assert durations(a5) == (10, 2, 88, 20, 0, 120)
    rows = {r.destination: r for r in conn.execute(text(
        "SELECT destination, completed_at, to_destination_s, turnaround_s FROM qi_delivery WHERE study_id = :s"),
        {"s": a5["study_id"]})}
    # each send from when what it carries was ready: the originals (and the AI node) from stable_at
    assert {d: (r.to_destination_s, r.turnaround_s) for d, r in rows.items()} == {
        "PACS": (5, 15), "MERCURE": (2, 12)}
    a1 = study(conn, 1)
    lpch = conn.execute(text("SELECT to_destination_s FROM qi_delivery WHERE study_id = :s AND destination = :d"),
                        {"s": a1["study_id"], "d": "LPCHROUTER"}).scalar_one()
    assert lpch == 3  # it carries the AI result: from ready_at (t+60) to t+63


def test_no_duration_is_negative_in_the_views_the_aggregates_or_the_report(conn: Connection) -> None:
    lows = minima(conn)
    assert set(lows) == {
        "qi_study.wait_stable_s", "qi_study.to_ai_s", "qi_study.ai_round_trip_s", "qi_study.result_settle_s",
        "qi_study.to_destinations_s", "qi_study.turnaround_s", "qi_delivery.to_destination_s",
        "qi_delivery.turnaround_s"}
    assert {k: v for k, v in lows.items() if v is None or v < 0} == {}
    # the CLI report's per-study rows and its summary
    exported = list(qi.iter_studies(conn, EVERYTHING, LA))
    assert len(exported) == 15
    for row in exported:
        for column in qi.STUDY_COLUMNS:
            if column.endswith("_s") and row[column] is not None:
                assert row[column] >= 0, (row["study_instance_uid"], column)
    numbers = [qi.daily_summary(conn, EVERYTHING, LA), qi.stage_stats(conn, EVERYTHING, LA, grain="all"),
               qi.delivery_times(conn, EVERYTHING, LA), qi.ai_overdue_studies(conn, EVERYTHING, LA)]
    for frame in numbers:
        for column in frame.columns:
            if column.endswith(("_p50", "_p90", "_p95", "_max", "_s")) or column in ("p50", "p90", "p95", "max"):
                assert (frame[column].dropna() >= 0).all(), column
    hist = qi.stage_histogram(conn, EVERYTHING, LA, stage="ai_round_trip", bin_s=10, max_s=600)
    assert (hist["bin_start"] >= 0).all()


def test_cache_and_live_rows_agree(conn: Connection) -> None:
    """The live views read delivery_started events; the triggers see them through their jobs."""
    qi.refresh_all(conn)
    assert qi.dirty_count(conn) == 0
    assert_clean_rows_cached(conn)


def test_the_previous_definitions_went_negative_on_this_fixture(
    db: Engine, qi_db: QiDatabase, pg_server: PostgresServer
) -> None:
    """Downgraded to 0005 (0002's views), the same rows give the negative durations 0006 removed;
    upgraded again, none. The downgrade restores exactly the view definitions of 0005."""
    config = alembic_config(qi_db.url)
    with db.connect() as conn:
        head_defs = view_definitions(conn)
        dirty = set(conn.execute(text("SELECT study_id FROM qi_dirty")).scalars())
    db.dispose()  # the migrations replace views that pooled sessions have planned
    command.downgrade(config, PREVIOUS)
    try:
        with db.connect() as conn:
            old = minima(conn)
            old_defs = view_definitions(conn)
            a1 = study(conn, 1)
            a5 = study(conn, 5)
    finally:
        db.dispose()
        migrate(qi_db.url)
    assert a1["ai_round_trip_s"] == -61 and a5["to_destinations_s"] == -105
    assert old["qi_study.ai_round_trip_s"] == -600  # A6
    assert old["qi_study.to_destinations_s"] == -105 and old["qi_delivery.to_destination_s"] == -105
    with db.connect() as conn:
        assert all(v >= 0 for v in minima(conn).values())
        assert view_definitions(conn) == head_defs
        # both migrations recomputed the cached rows of clean studies and left dirty ones dirty
        assert set(conn.execute(text("SELECT study_id FROM qi_dirty")).scalars()) == dirty
        assert_clean_rows_cached(conn)
    assert old_defs != head_defs
    assert old_defs == fresh_definitions(pg_server, qi_db, PREVIOUS)


def assert_clean_rows_cached(conn: Connection) -> None:
    """Cached rows are exactly the live rows of the studies not marked dirty."""
    for cached, live in (("qi_study_fact", "qi_study_live"), ("qi_delivery_fact", "qi_delivery_live")):
        clean = f"(SELECT * FROM {live} WHERE study_id NOT IN (SELECT study_id FROM qi_dirty)) c"
        for a, b in ((cached, clean), (clean, cached)):
            diff = conn.execute(text(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) d"))  # noqa: S608
            assert diff.scalar_one() == 0, f"{a} has rows that {b} has not"


def view_definitions(conn: Connection) -> dict[str, str]:
    return dict(conn.execute(text(
        "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
        "WHERE c.relkind = 'v' AND c.relname LIKE 'qi\\_%' ORDER BY 1")).all())


def fresh_definitions(pg_server: PostgresServer, qi_db: QiDatabase, revision: str) -> dict[str, str]:
    """The view definitions of a new database migrated straight to `revision`."""
    name = f"{qi_db.name}_at_{revision}"
    pg_server.create_database(name, owner=qi_db.settings.postgres_user)
    url = qi_db.settings.pg_url(name)
    try:
        command.upgrade(alembic_config(url), revision)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                return view_definitions(conn)
        finally:
            engine.dispose()
    finally:
        pg_server.drop_database(name)
