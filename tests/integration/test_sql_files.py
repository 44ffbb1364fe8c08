"""db/sql holds today's definition of every QI view and SQL function, and nothing else.

* The files agree with db/sql/ORDER, and each creates exactly the object it is named after.
* A database at head holds exactly the files' objects: every view and function of the
  database has a file, every file an object, and loading the files again changes no
  definition (so an object added without a file, or a definition changed by a migration
  instead of in its file, fails here).
* 0008 loads the files and they are exactly what 0007 left: every view and function of
  a database at 0007 is the same after 0008 (definition, columns, owner, privileges),
  and no cached row is recomputed (a file edited without a new migration that loads it
  fails here, while 0008 is the newest such migration). So its downgrade has nothing to undo: head -> 0007
  -> head round-trips, and the database at 0007 is the one 0007 creates.
* A definition that differs from its file is replaced by the next migration that
  loads db/sql, which recomputes the cached rows of clean studies and keeps the dirty
  ones dirty.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from core import qi, schema_sql
from core.db import alembic_config, make_engine
from core.schema_sql import SqlFilesError
from testkit.harness.stack import PostgresServer, QiDatabase
from tests.integration import qi_fixture

PREVIOUS = "0007"
REVISION = "0008"
# Objects that later migrations loading db/sql add (a downgrade to 0007 drops them).
ADDED_AFTER = frozenset({"qi_drill_studies", "qi_hist_stages", "qi_hist_bounds", "qi_hist_bucket",
                         "qi_stage_hist_fill", "qi_stage_hist_sync", "qi_hist_usable", "qi_hist_days",
                         "qi_hist_delta", "qi_stage_stats_hist", "qi_stage_histogram_hist",
                         "qi_study_cube_fill", "qi_cube_rows", "qi_cube_delta", "qi_sla_compliance_hist",
                         # 0014
                         "qi_delivery_hist_fill", "qi_delivery_hist_sync", "qi_attempt_day_fill",
                         "qi_attempt_day_sync", "qi_attempt_day_compact", "qi_ai_day_fill", "qi_hist_long",
                         "qi_delivery_delta", "qi_delivery_cube_rows", "qi_ai_delta", "qi_delivery_times_hist",
                         "qi_ai_outcomes_hist",
                         # 0015
                         "qi_hist_stage_ids", "qi_hist_counts"})
# Objects whose definition a later migration loading db/sql changed (its downgrade restores them).
CHANGED_AFTER = frozenset({"qi_stage_stats", "qi_stage_histogram", "qi_study_outcomes", "qi_volume",
                           "qi_volume_heatmap", "qi_sla_compliance",
                           # 0014
                           "qi_delivery_times", "qi_delivery_outcomes", "qi_ai_outcomes", "qi_attempt_failures",
                           "qi_refresh"})
VERSIONS = Path(__file__).resolve().parents[2] / "db" / "migrations" / "versions"


# --- the files alone -------------------------------------------------------------------


def test_the_files_follow_their_order_one_object_each() -> None:
    objs = schema_sql.objects()
    assert [o.name for o in objs] == schema_sql.order()
    assert len(objs) == len({o.name for o in objs}) > 0
    assert {o.kind for o in objs} == {"view", "function"}
    assert {p.name for p in schema_sql.SQL_DIR.iterdir()} == (
        {f"{o.name}.sql" for o in objs} | {schema_sql.ORDER_FILE, "README.md"})


def test_the_files_are_checked_against_their_order_and_names(tmp_path: Path) -> None:
    (tmp_path / "ORDER").write_text("# comment\nqi_a\nqi_b  # trailing comment\n")
    (tmp_path / "qi_a.sql").write_text("-- a\nCREATE OR REPLACE VIEW qi_a AS SELECT 1 AS one;\n")
    (tmp_path / "qi_b.sql").write_text("CREATE OR REPLACE FUNCTION qi_b() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n")
    assert [(o.name, o.kind) for o in schema_sql.objects(tmp_path)] == [("qi_a", "view"), ("qi_b", "function")]

    (tmp_path / "qi_c.sql").write_text("CREATE OR REPLACE VIEW qi_c AS SELECT 1 AS one;\n")
    with pytest.raises(SqlFilesError, match=r"files not listed \['qi_c'\]"):
        schema_sql.objects(tmp_path)
    (tmp_path / "ORDER").write_text("qi_a\nqi_b\nqi_c\nqi_d\n")
    with pytest.raises(SqlFilesError, match=r"listed without a file \['qi_d'\]"):
        schema_sql.objects(tmp_path)
    (tmp_path / "ORDER").write_text("qi_a\nqi_b\nqi_c\n")
    (tmp_path / "qi_c.sql").write_text("CREATE OR REPLACE VIEW qi_x AS SELECT 1 AS one;\n")
    with pytest.raises(SqlFilesError, match="qi_c.sql must hold one"):
        schema_sql.objects(tmp_path)
    (tmp_path / "qi_c.sql").write_text("CREATE VIEW qi_c AS SELECT 1 AS one;\n")  # not replaceable
    with pytest.raises(SqlFilesError, match="qi_c.sql must hold one"):
        schema_sql.objects(tmp_path)


def test_0008_is_a_migration_that_loads_db_sql() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://unused"))
    assert REVISION in schema_sql.loader_revisions(script)
    assert script.get_revision(REVISION).down_revision == PREVIOUS


# --- a database at head ----------------------------------------------------------------

@pytest.fixture
def db(qi_db: QiDatabase) -> Iterator[Engine]:
    """The test's head database, holding the QI fixtures: every study cached, S1 and S2 then
    changed (dirty)."""
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        qi.sync_qi_settings(conn, qi_db.settings)
        studies = qi_fixture.build(conn)
        qi_fixture.build_attempts(conn)
    with engine.begin() as conn:
        qi.refresh_all(conn)
        conn.execute(text("UPDATE studies SET updated_at = updated_at WHERE id IN (:a, :b)"),
                     {"a": studies["S1"].study_id, "b": studies["S2"].study_id})
    with engine.begin() as conn:
        assert qi.dirty_count(conn) == 2
    try:
        yield engine
    finally:
        engine.dispose()


def snapshot(engine: Engine) -> dict[str, object]:
    """Every view and function with its definition, the cached rows with the transaction
    that wrote them (xmin: a recomputed row has a new one) and the dirty studies."""
    with engine.connect() as conn:
        return {
            "objects": schema_sql.database_objects(conn),
            "study_fact": conn.execute(text(
                "SELECT xmin::text, study_id FROM qi_study_fact ORDER BY study_id")).all(),
            "delivery_fact": conn.execute(text(
                "SELECT xmin::text, study_id, purpose, destination FROM qi_delivery_fact ORDER BY 2, 3, 4")).all(),
            "dirty": conn.execute(text("SELECT study_id FROM qi_dirty ORDER BY 1")).scalars().all(),
        }


@pytest.mark.integration
def test_every_view_and_function_at_head_has_its_file_and_every_file_its_object(db: Engine) -> None:
    with db.connect() as conn:
        in_db = [(o.name, o.kind) for o in schema_sql.database_objects(conn)]
    assert len(in_db) == len(set(in_db)), "a function has several signatures"
    assert sorted(in_db) == sorted((o.name, o.kind) for o in schema_sql.objects())


@pytest.mark.integration
def test_head_holds_the_files_definitions(db: Engine) -> None:
    """Loading the files again into a database at head changes nothing: no definition,
    no privilege, no cached row."""
    before = snapshot(db)
    with db.begin() as conn:
        assert schema_sql.load(conn) == []
    assert snapshot(db) == before


@pytest.mark.integration
def test_loading_replaces_what_differs_and_recomputes_the_cache(db: Engine) -> None:
    """The loader replaces a definition that differs from its file (here 0002's qi_study_live,
    whose durations went negative, and a broken helper) and recomputes the cached rows of
    clean studies, keeping the dirty ones dirty; the grants stay."""
    before = snapshot(db)
    with db.begin() as conn:
        conn.exec_driver_sql(migration_module("0006_attempt_durations.py").PREVIOUS_STUDY_LIVE)
        conn.exec_driver_sql("CREATE OR REPLACE FUNCTION qi_bucket(p_grain text, d date, w date, m date) "
                             "RETURNS date LANGUAGE sql IMMUTABLE AS $$ SELECT NULL::date $$")
        for statement in schema_sql.RECACHE:
            conn.execute(text(statement))
        assert negative_round_trips(conn) > 0  # in cached rows of clean studies (A1, A6)
    tampered = snapshot(db)
    with db.begin() as conn:
        assert schema_sql.load(conn) == ["qi_study_live", "qi_bucket"]
    after = snapshot(db)
    assert after["objects"] == before["objects"]
    assert after["dirty"] == tampered["dirty"] == before["dirty"]
    for fact in ("study_fact", "delivery_fact"):
        assert [r[1:] for r in after[fact]] == [r[1:] for r in tampered[fact]]  # the same rows ...
        assert {r[0] for r in after[fact]}.isdisjoint(r[0] for r in tampered[fact])  # ... written again
    with db.connect() as conn:
        assert negative_round_trips(conn) == 0
        assert_clean_rows_cached(conn)


@pytest.mark.integration
def test_a_view_dropped_with_its_dependents_comes_back_with_its_grants(db: Engine) -> None:
    """What a migration does before changing a view's columns (db/sql/README.md): DROP ...
    CASCADE, then load. Everything dropped is recreated, and grafana_ro may read again."""
    before = snapshot(db)
    with db.begin() as conn:
        conn.execute(text("DROP VIEW qi_study_live CASCADE"))
        changed = schema_sql.load(conn)
    assert {"qi_study_live", "qi_delivery_live", "qi_study", "qi_delivery",
            "qi_filtered_studies", "qi_filtered_deliveries"} <= set(changed)
    after = snapshot(db)
    assert after["objects"] == before["objects"]
    readable = {o.name: o.definition for o in after["objects"] if o.name in qi.READABLE_RELATIONS}
    assert set(readable) == {"qi_study", "qi_delivery", "qi_attempt"}
    assert all(f"{qi.READER_ROLE}=r/" in definition for definition in readable.values())
    with db.connect() as conn:
        assert_clean_rows_cached(conn)


@pytest.mark.integration
def test_a_function_left_with_two_signatures_is_refused(db: Engine) -> None:
    with db.begin() as conn, pytest.raises(SqlFilesError, match=r"more than one signature.*\['qi_wants'\]"):
        conn.exec_driver_sql("CREATE FUNCTION qi_wants(p_list text[]) RETURNS boolean "
                             "LANGUAGE sql IMMUTABLE AS $$ SELECT true $$")
        schema_sql.load(conn)


# --- 0008 against 0007 -----------------------------------------------------------------


@pytest.mark.integration
def test_0008_changes_nothing_that_0007_left(pg_server: PostgresServer, qi_db: QiDatabase) -> None:
    """A database at 0007, with studies cached and dirty, is the same after 0008.

    The studies are written by today's code (at head), then the database goes down to 0007:
    today's recorder writes columns that 0007 does not have."""
    with new_database(pg_server, qi_db) as url:
        config = alembic_config(url)
        command.upgrade(config, "head")
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                qi.sync_qi_settings(conn, qi_db.settings)
                qi_fixture.build(conn)
            with engine.begin() as conn:
                assert qi.refresh(conn, limit=4) == 4
            engine.dispose()
            command.downgrade(config, PREVIOUS)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM qi_dirty")).scalar_one() > 0
            at_0007 = snapshot(engine)
            engine.dispose()
            command.upgrade(config, REVISION)
            assert snapshot(engine) == at_0007
        finally:
            engine.dispose()


@pytest.mark.integration
def test_downgrade_to_0007_and_upgrade_round_trip(db: Engine, qi_db: QiDatabase, pg_server: PostgresServer) -> None:
    config = alembic_config(qi_db.url)
    at_head = snapshot(db)
    db.dispose()  # the migrations may replace what pooled sessions have planned
    command.downgrade(config, PREVIOUS)
    at_0007 = snapshot(db)
    db.dispose()
    command.upgrade(config, "head")
    assert snapshot(db) == at_head
    assert {o.name for o in at_0007["objects"]} == {o.name for o in at_head["objects"]} - ADDED_AFTER
    assert {**at_0007, "objects": [o for o in at_0007["objects"] if o.name not in CHANGED_AFTER]} == {
        **at_head, "objects": [o for o in at_head["objects"] if o.name not in ADDED_AFTER | CHANGED_AFTER]}
    # and what the downgrade left is what 0007 creates
    with new_database(pg_server, qi_db) as url:
        command.upgrade(alembic_config(url), PREVIOUS)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                assert schema_sql.database_objects(conn) == at_0007["objects"]
        finally:
            engine.dispose()


# --- helpers ---------------------------------------------------------------------------


@contextmanager
def new_database(pg_server: PostgresServer, qi_db: QiDatabase) -> Iterator[str]:
    """An empty database owned by the hub's user, dropped afterwards; yields its URL."""
    name = f"{qi_db.name}_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name, owner=qi_db.settings.postgres_user)
    try:
        yield qi_db.settings.pg_url(name)
    finally:
        pg_server.drop_database(name)


def migration_module(filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"migration_{filename[:4]}", VERSIONS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def negative_round_trips(conn: Connection) -> int:
    return conn.execute(text("SELECT count(*) FROM qi_study WHERE ai_round_trip_s < 0")).scalar_one()


def assert_clean_rows_cached(conn: Connection) -> None:
    """Cached rows are exactly the live rows of the studies not marked dirty."""
    for cached, live in (("qi_study_fact", "qi_study_live"), ("qi_delivery_fact", "qi_delivery_live")):
        clean = f"(SELECT * FROM {live} WHERE study_id NOT IN (SELECT study_id FROM qi_dirty)) c"
        for a, b in ((cached, clean), (clean, cached)):
            diff = conn.execute(text(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) d"))
            assert diff.scalar_one() == 0, f"{a} has rows that {b} has not"
