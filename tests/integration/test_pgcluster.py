"""ops.pgcluster against real clusters: lifecycle with pg_ctl, roles and privileges."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text

from core.envfile import generate_secret
from core.settings import Settings
from ops import pgcluster
from testkit.harness.ports import free_port
from testkit.harness.stack import PostgresServer, QiDatabase, make_pg_base, remove_tree

pytestmark = pytest.mark.integration


def _connect(settings: Settings, user: str, password: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(host=settings.postgres_host, port=settings.postgres_port, user=user,
                           password=password, dbname=dbname, connect_timeout=5)


def test_pg_ctl_lifecycle_and_idempotent_init() -> None:
    base = make_pg_base()
    datadir, port, password = base / "data", free_port(), generate_secret()
    try:
        assert pgcluster.init_cluster(datadir, port, "127.0.0.1", superuser_password=password) is True
        assert pgcluster.init_cluster(datadir, port, "127.0.0.1", superuser_password=password) is False
        pgcluster.start(datadir, port, base / "postgres.log")
        pgcluster.wait_ready("127.0.0.1", port, timeout=10)
        assert pgcluster.is_running(datadir)
        with pgcluster.connect_superuser("127.0.0.1", port, password) as conn:
            assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            pgcluster.connect_superuser("127.0.0.1", port, "not-the-password")
        pgcluster.stop(datadir)
        assert not pgcluster.is_running(datadir)
        pgcluster.stop(datadir)  # stopping a stopped cluster is fine
    finally:
        if pgcluster.is_running(datadir):
            pgcluster.stop(datadir, mode="immediate")
        remove_tree(base)


def test_roles_are_idempotent_and_grafana_is_read_only(
    pg_server: PostgresServer, hub_settings: Settings
) -> None:
    pgcluster.ensure_roles_and_databases(hub_settings, superuser_password=pg_server.superuser_password)
    s = hub_settings
    with _connect(s, s.postgres_user, s.postgres_password.get_secret_value(), s.qi_db) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").fetchone()
        assert owner == (s.postgres_user,)
    grafana = s.grafana_db_password.get_secret_value()
    with _connect(s, pgcluster.GRAFANA_ROLE, grafana, s.qi_db) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE grafana_must_not_write (x int)")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        _connect(s, pgcluster.GRAFANA_ROLE, grafana, s.postgres_db)


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_migrated_qi_database(qi_db: QiDatabase, run: int) -> None:
    engine = create_engine(qi_db.url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert "alembic_version" in tables
        assert "harness_marker" not in tables, "a previous test's database leaked"
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            assert conn.execute(text("SELECT current_database()")).scalar() == qi_db.name
            conn.execute(text("CREATE TABLE harness_marker (run int)"))
    finally:
        engine.dispose()
    assert qi_db.settings.qi_db == qi_db.name
    assert f"QI_DB={qi_db.name}" in qi_db.env_file.read_text()
