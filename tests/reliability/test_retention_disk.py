"""Retention's disk watermark on a full DICOM_STORAGE (a small tmpfs), with a real Orthanc and worker.

The two oldest studies wait for a held destination; the others are delivered until
Orthanc refuses the next one. The worker's own retention thread runs (the disk is far
under RETENTION_DISK_LOW_MB) and deletes nothing, because everything was touched within
the hour. Two hours on (core/retention's clock), delivered studies go oldest first until
RETENTION_DISK_HIGH_MB are free, and no further; with a HIGH that cannot be reached every
delivered study goes, and the undelivered ones still stay.
A disk round starts only under LOW: a run with free space between LOW and HIGH deletes nothing.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from core import retention
from core.disk import MIB
from core.operations import hold_destination
from core.orthanc_client import OrthancClient
from core.settings import Settings, settings_from_values
from core.states import AuditSource
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, PostgresServer, QiDatabase
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess, jobs, rules_file
from testkit.synthetic import make_study
from tests.reliability.test_disk_pressure import REFUSED, big, small_disk  # noqa: F401 - small_disk is a fixture
from worker.main import SessionLock
from worker.retention import Retention

pytestmark = pytest.mark.integration


def lease(engine: Engine) -> SessionLock:
    """The worker's retention lease, on unpooled connections: releasing it really ends its session
    (a pooled connection would keep the advisory lock when returned to the pool)."""
    return SessionLock(create_engine(engine.url, poolclass=NullPool), retention.RETENTION_LOCK_KEY)

LOW_MB, HIGH_MB = 3, 5
RULES = """
version: 1
rules:
  - name: held
    when: {kind: original, all: [{tag: StudyDescription, contains: HELD}]}
    then: {deliver_to: [HELD]}
  - name: routine
    when: {kind: original, all: [{tag: StudyDescription, contains: ROUTINE}]}
    then: {deliver_to: [PACS]}
"""


@pytest.fixture
def full_stack(small_disk: Path, pg_server: PostgresServer, qi_db: QiDatabase, hub_values: dict[str, str],  # noqa: F811
               tmp_path: Path, make_pacs: Callable[..., StorageSCP]) -> Iterator[tuple[dict, OrthancServer, Engine]]:
    values = {
        **hub_values, "QI_DB": qi_db.name, "POSTGRES_DB": f"orthanc_ret_{uuid.uuid4().hex[:10]}",
        "DICOM_STORAGE": str(small_disk), "STATE_DIR": str(tmp_path / "state"),
        "ORTHANC_WEB_PORT": str(free_port()), "DICOM_PORT": str(free_port()), "ROUTING_API_PORT": str(free_port()),
        "ROUTING_RULES": rules_file(tmp_path, RULES), "DISK_FREE_WARN_MB": "1", "POLL_INTERVAL": "0.2",
        "RETENTION_DISK_LOW_MB": str(LOW_MB), "RETENTION_DISK_HIGH_MB": str(HIGH_MB), "RETENTION_BATCH": "2",
        "RETENTION_CHECK_S": "1",
    }
    settings = settings_from_values(values)
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    orthanc = OrthancServer(settings, tmp_path / "orthanc")
    engine = create_engine(settings.pg_url())
    try:
        orthanc.start()
        assert orthanc.rest is not None
        for name in ("PACS", "HELD"):
            orthanc.rest.put_modality(name, name, make_pacs(name).port)
        yield values, orthanc, engine
    finally:
        orthanc.stop()
        engine.dispose()
        pg_server.drop_database(settings.postgres_db)


def studies_in(orthanc: OrthancServer) -> set[str]:
    assert orthanc.rest is not None
    return set(orthanc.rest.get("/studies"))


def run_two_hours_on(settings: Settings, engine: Engine) -> retention.RunResult:
    later = datetime.now(UTC) + timedelta(hours=2)
    with OrthancClient.from_settings(settings) as orthanc:
        worker = Retention(settings, engine, orthanc, lease(engine),
                           clock=lambda: later)
        try:
            result = worker.run_once()
        finally:
            worker.lease.release()
    assert result is not None
    return result


def test_a_full_disk_loses_delivered_studies_oldest_first_and_never_an_undelivered_one(
    full_stack: tuple[dict, OrthancServer, Engine], small_disk: Path, tmp_path: Path,  # noqa: F811
) -> None:
    values, orthanc, engine = full_stack
    settings = settings_from_values(values)
    with engine.begin() as conn:
        hold_destination(conn, "HELD", actor="test", source=AuditSource.CLI)
    worker = WorkerProcess(values, tmp_path, "worker").start()

    def send(description: str) -> int:
        return send_datasets(big(make_study(1, 1, description)), "127.0.0.1", settings.dicom_port, "MODALITY1",
                             settings.orthanc_aet)[0]

    # 1. The oldest two wait for the held destination; then routine studies until the disk is full.
    assert [send("CR HELD 1"), send("CR HELD 2")] == [0, 0]
    routine = 0
    while send(f"CR ROUTINE {routine}") == 0:
        routine += 1
        assert routine < 40, "the disk never filled"
    assert routine >= 10 and shutil.disk_usage(small_disk).free < LOW_MB * MIB
    wait_until(lambda: sorted(j["state"] for j in jobs(engine)) == ["queued"] * 2 + ["succeeded"] * routine,
               timeout=90, what="every routine study delivered, the held ones queued")

    # 2. The worker's own retention ran under the low watermark, and deleted nothing: all touched this hour.
    def worker_ran() -> dict | None:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT purged, oldest_kept FROM retention_status")).mappings().first()
        return dict(row) if row and row["oldest_kept"] and row["oldest_kept"]["reason"].startswith("job #") else None

    ran = wait_until(worker_ran, timeout=30, what="the worker's retention run recorded")
    assert ran["purged"] == 0 and "is queued" in ran["oldest_kept"]["reason"], ran
    assert len(studies_in(orthanc)) == routine + 2
    worker.stop()

    with engine.connect() as conn:
        order = [r.id for r in conn.execute(text("SELECT id FROM studies WHERE description LIKE 'CR ROUTINE%' "
                                                 "ORDER BY first_received_at, id"))]
        held = set(conn.execute(text("SELECT orthanc_id FROM studies WHERE description LIKE 'CR HELD%'")).scalars())

    # 3. Two hours on: delivered studies go oldest first, until HIGH is free, and no further.
    first = run_two_hours_on(settings, engine)
    k = len(first.purged)
    assert 0 < k < routine and first.purged == order[:k], (first.purged, order)
    free = shutil.disk_usage(small_disk).free
    assert free >= HIGH_MB * MIB and first.free_after == free
    assert held <= studies_in(orthanc) and len(studies_in(orthanc)) == routine + 2 - k
    assert run_two_hours_on(settings, engine).purged == [], "above LOW, no disk round starts"

    # 4. Watermarks no deletion can reach: every delivered study goes, the undelivered ones stay.
    unreachable = settings_from_values({**values, "RETENTION_DISK_LOW_MB": "999", "RETENTION_DISK_HIGH_MB": "1000"})
    second = run_two_hours_on(unreachable, engine)
    assert second.purged == order[k:]
    assert studies_in(orthanc) == held
    kept = {d.study: d.reason for d in second.plan.kept()}
    assert len(kept) == 2 and all("is queued" in r for r in kept.values()), kept
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events WHERE type = 'purged'")).scalar_one() == routine
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar_one() == routine + 2

    # 5. Orthanc takes new studies again.
    assert send("CR ROUTINE AFTER") == 0
