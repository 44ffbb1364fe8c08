"""Session-wide test fixtures: a real PostgreSQL, a real Orthanc and real DICOM peers.

Nothing here is mocked. Servers start lazily (only when a test asks for them), on
free loopback ports in temporary directories, and are stopped at the end of the
session even when a test or a fixture fails (see testkit/harness/procs.py for the
case where pytest itself is killed).

Main fixtures:
- hub_settings / hub_values / hub_env_file / use_hub_env / make_settings: the
  configuration every component reads (TZ America/Los_Angeles, STABLE_AGE=1).
- pg_server: the PostgreSQL cluster with the hub's roles and databases.
- orthanc: the Orthanc server (`.rest` is an authenticated client); clean_orthanc
  empties it first (patients, modalities, change log, unfinished jobs).
- qi_db: a fresh, migrated QI database per test (copied from a migrated template).
- make_pacs / pacs / ai_node: storage SCPs and a mercure-like AI node.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from core.envfile import generate_secret
from core.settings import Settings, settings_from_values
from ops import pgcluster
from testkit.dicom_peers import AINode, StorageSCP
from testkit.harness.ports import free_port
from testkit.harness.stack import (
    OrthancServer,
    PostgresServer,
    QiDatabase,
    make_pg_base,
    make_values,
    remove_tree,
    write_env,
)

# --- parallel runs (pytest-xdist, `make test`) -------------------------------------------

# `make test` runs two passes: every test not marked `serial` in pytest-xdist workers, then
# the `serial` ones alone, one after another. Serial: the reliability suite, whose CPU hogs,
# kills and floods (and exactly-once and round-trip checks) are meant for one loaded
# machine, not for sharing it with another worker's tests.
_SERIAL = ("tests/reliability/",)
# Inside the parallel pass, tests that must share one worker, in collection order: the
# browser tests (one chromium at a time), and the bad-input suite before the log check that
# reads its logs (tests/security/test_no_phi_in_logs.py).
_WORKER_GROUPS = {
    "tests/browser/": "browser",
    "tests/badinput/": "logs",
    "tests/security/test_no_phi_in_logs.py": "logs",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        if where.startswith(_SERIAL):
            item.add_marker(pytest.mark.serial)
        group = next((g for prefix, g in _WORKER_GROUPS.items() if where.startswith(prefix)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


# --- configuration -------------------------------------------------------------------


@pytest.fixture(scope="session")
def hub_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    base = make_pg_base()
    try:
        yield base
    finally:
        remove_tree(base)


@pytest.fixture(scope="session")
def hub_values(hub_base_dir: Path, pg_base_dir: Path) -> dict[str, str]:
    """Raw KEY -> value settings of the test stack (env.defaults + test overrides)."""
    return make_values(hub_base_dir, pg_base_dir / "pgdata")


@pytest.fixture(scope="session")
def hub_settings(hub_values: dict[str, str]) -> Settings:
    return settings_from_values(hub_values)


@pytest.fixture(scope="session")
def make_settings(hub_values: dict[str, str]) -> Callable[..., Settings]:
    """`make_settings(STABLE_AGE="2", ...)`: the session settings with overrides, validated."""

    def factory(**overrides: str) -> Settings:
        return settings_from_values({**hub_values, **overrides})

    return factory


@pytest.fixture(scope="session")
def hub_env_file(hub_values: dict[str, str], hub_base_dir: Path) -> Path:
    """A .env file matching hub_settings, for code and subprocesses using HUB_ENV_FILE."""
    return write_env(hub_values, hub_base_dir / ".env")


@pytest.fixture
def use_hub_env(hub_env_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HUB_ENV_FILE at the session .env for the duration of one test."""
    monkeypatch.setenv("HUB_ENV_FILE", str(hub_env_file))
    return hub_env_file


# --- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(hub_settings: Settings, pg_base_dir: Path) -> Iterator[PostgresServer]:
    """The session's PostgreSQL, with POSTGRES_USER owning POSTGRES_DB and QI_DB."""
    server = PostgresServer(
        datadir=hub_settings.postgres_storage,
        host=hub_settings.postgres_host,
        port=hub_settings.postgres_port,
        superuser_password=generate_secret(),
        logfile=pg_base_dir / "postgres.log",
    )
    try:
        server.start()
        pgcluster.ensure_roles_and_databases(hub_settings, superuser_password=server.superuser_password)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def qi_template(pg_server: PostgresServer, hub_settings: Settings) -> Iterator[str]:
    """A QI database migrated to head once per session; per-test databases copy it."""
    from core.db import migrate

    name = f"{hub_settings.qi_db}_template"
    pg_server.drop_database(name)
    pg_server.create_database(name, owner=hub_settings.postgres_user)
    try:
        migrate(hub_settings.pg_url(name))
        pg_server.disconnect_all(name)
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def qi_db(
    pg_server: PostgresServer, qi_template: str, hub_values: dict[str, str], tmp_path: Path
) -> Iterator[QiDatabase]:
    """A migrated QI database of its own for one test, dropped afterwards."""
    values = {**hub_values, "QI_DB": f"{hub_values['QI_DB']}_{uuid.uuid4().hex[:12]}"}
    settings = settings_from_values(values)
    pg_server.disconnect_all(qi_template)
    pg_server.create_database(settings.qi_db, owner=settings.postgres_user, template=qi_template)
    try:
        with pg_server.connect() as conn:
            pgcluster.restrict_qi_database(conn, settings.qi_db)
        env_file = write_env(values, tmp_path / ".env")
        yield QiDatabase(settings.qi_db, settings.pg_url(), settings, env_file)
    finally:
        pg_server.drop_database(settings.qi_db)


@pytest.fixture
def orthanc_index_sql(pg_server: PostgresServer, hub_settings: Settings) -> Callable[..., list[tuple]]:
    """Run a read-only query on Orthanc's PostgreSQL index: `orthanc_index_sql(query, params)`."""

    def run(query: str, params: tuple = ()) -> list[tuple]:
        with pg_server.connect(hub_settings.postgres_db) as conn:
            return conn.execute(sql.SQL(query), params).fetchall()  # type: ignore[arg-type]

    return run


# --- Orthanc -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def orthanc(
    hub_settings: Settings, pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancServer]:
    """The session's Orthanc (TZ from the settings: America/Los_Angeles)."""
    server = OrthancServer(hub_settings, tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_orthanc(orthanc: OrthancServer) -> OrthancServer:
    """The session's Orthanc, emptied: no patients, modalities, changes or running jobs."""
    assert orthanc.rest is not None
    orthanc.rest.reset()
    return orthanc


# --- DICOM peers ---------------------------------------------------------------------


@pytest.fixture
def make_pacs(tmp_path: Path) -> Iterator[Callable[..., StorageSCP]]:
    """`make_pacs(aet="PACS", mode="accept")`: a started storage SCP on a free port."""
    started: list[StorageSCP] = []

    def factory(aet: str = "PACS", mode: str = "accept") -> StorageSCP:
        scp = StorageSCP(aet, free_port(), tmp_path / f"pacs-{aet}-{len(started)}", mode=mode)
        started.append(scp.start())
        return scp

    try:
        yield factory
    finally:
        for scp in started:
            scp.stop()


@pytest.fixture
def pacs(make_pacs: Callable[..., StorageSCP]) -> StorageSCP:
    return make_pacs("PACS")


@pytest.fixture
def ai_node(hub_settings: Settings, tmp_path: Path) -> Iterator[AINode]:
    """A mercure-like AI node (AET MERCURE) that returns results to the session Orthanc."""
    node = AINode(
        aet="MERCURE",
        port=free_port(),
        orthanc_host="127.0.0.1",
        orthanc_dicom_port=hub_settings.dicom_port,
        orthanc_aet=hub_settings.orthanc_aet,
        delay_s=0.2,
        quiet_s=0.5,
        out_dir=tmp_path / "mercure-in",
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()
