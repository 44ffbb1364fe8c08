"""Backup and restore against real servers: the harness's PostgreSQL, an Orthanc of the
test's own (own index database and DICOM storage), a real worker and a real PACS.

The stack is stopped and started through a StackControl over these servers; the full
native stack's round trip (through `make backup`/`make uninstall`/`make restore`) is in
test_tooling_fullstack.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from core.settings import PROJECT_ROOT, Settings, settings_from_values
from ops.tooling.archive import MANIFEST, verify_archive
from ops.tooling.backup import BackupError, create_backup, list_backups, restore_backup
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, PostgresServer, QiDatabase, write_env
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration

ALL_TO_PACS = """
version: 1
rules:
  - name: everything-to-pacs
    when: {kind: original}
    then: {deliver_to: [PACS], payload: matched}
"""


@dataclass
class MiniStack:
    values: dict[str, str]
    settings: Settings
    env_file: Path
    orthanc: OrthancServer
    pg: PostgresServer
    worker: WorkerProcess | None = None


class HarnessControl:
    """Stops and starts the test's Orthanc and worker; PostgreSQL is the harness's."""

    def __init__(self, stack: MiniStack) -> None:
        self.stack = stack
        self.calls: list[str] = []

    def stop_all(self) -> None:
        self.calls.append("stop")
        if self.stack.worker is not None:
            self.stack.worker.stop()
            self.stack.worker = None
        self.stack.orthanc.stop()

    def start_all(self) -> None:
        self.calls.append("start")
        self.stack.orthanc.start()

    @contextmanager
    def maintenance_db(self, settings: Settings) -> Iterator[str]:
        yield self.stack.pg.superuser_password


@pytest.fixture
def stack(pg_server: PostgresServer, qi_db: QiDatabase, hub_values: dict[str, str], tmp_path: Path,
          make_pacs: Callable[..., StorageSCP]) -> Iterator[MiniStack]:
    """An Orthanc + worker holding two studies that the worker delivered to a PACS."""
    rules = tmp_path / "routing.yml"
    rules.write_text(ALL_TO_PACS)
    values = {
        **hub_values,
        "QI_DB": qi_db.name,
        "POSTGRES_DB": f"orthanc_bk_{uuid.uuid4().hex[:10]}",
        "DICOM_STORAGE": str(tmp_path / "storage"),
        "STATE_DIR": str(tmp_path / "state"),
        "ORTHANC_WEB_PORT": str(free_port()),
        "DICOM_PORT": str(free_port()),
        "ROUTING_API_PORT": str(free_port()),
        "ROUTING_RULES": str(rules),
    }
    settings = settings_from_values(values)
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    env_file = write_env(values, tmp_path / ".env")
    orthanc = OrthancServer(settings, tmp_path / "orthanc")
    orthanc.start()
    mini = MiniStack(values, settings, env_file, orthanc, pg_server)
    try:
        pacs = make_pacs("PACS")
        assert orthanc.rest is not None
        orthanc.rest.put_modality("PACS", "PACS", pacs.port)
        mini.worker = WorkerProcess(values, tmp_path, "worker").start()
        for description in ("CHEST PA", "HAND LEFT"):
            statuses = send_datasets(make_study(2, 3, description), "127.0.0.1", settings.dicom_port, "MOD1",
                                     settings.orthanc_aet)
            assert statuses == [0] * 6
        engine = create_engine(settings.pg_url())
        try:
            wait_until(lambda: _scalar(engine, "SELECT count(*) FROM routing_jobs WHERE state = 'succeeded'") == 2,
                       timeout=60, what="both studies delivered")
        finally:
            engine.dispose()
        assert pacs.instance_count == 12
        yield mini
    finally:
        if mini.worker is not None:
            mini.worker.stop()
        mini.orthanc.stop()
        pg_server.drop_database(settings.postgres_db)


def _scalar(engine: Any, query: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(query)).scalar_one()


def orthanc_snapshot(orthanc: OrthancServer) -> dict[str, Any]:
    """Study UIDs, each instance's file checksum, and the modalities Orthanc holds."""
    rest = orthanc.rest
    assert rest is not None
    studies = sorted(rest.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in rest.get("/studies"))
    files = {}
    for instance in rest.get("/instances"):
        response = rest.http.get(f"/instances/{instance}/file")
        response.raise_for_status()
        files[instance] = hashlib.sha256(response.content).hexdigest()
    return {"studies": studies, "files": files, "modalities": rest.get("/modalities", expand="")}


def qi_snapshot(settings: Settings) -> dict[str, list[tuple]]:
    """Every row of every QI table and of the public QI views, in a stable order."""
    engine = create_engine(settings.pg_url())
    try:
        with engine.connect() as conn:
            names = conn.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND (table_type = 'BASE TABLE' OR table_name IN ('qi_study', 'qi_delivery', 'qi_attempt')) "
                "ORDER BY table_name")).scalars().all()
            assert "qi_study" in names and "routing_jobs" in names
            return {name: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{name}"')).all())) for name in names}
    finally:
        engine.dispose()


def test_backup_round_trip_restores_studies_files_qi_rows_and_destinations(stack: MiniStack, tmp_path: Path) -> None:
    before_orthanc = orthanc_snapshot(stack.orthanc)
    assert len(before_orthanc["studies"]) == 2 and len(before_orthanc["files"]) == 12
    assert stack.worker is not None
    stack.worker.stop()
    stack.worker = None
    before_qi = qi_snapshot(stack.settings)
    assert len(before_qi["studies"]) == 2 and len(before_qi["qi_study"]) == 2

    archive = create_backup(stack.settings, stack.env_file, tmp_path / "backups")
    assert re.fullmatch(r"hub-backup-\d{8}T\d{6}Z\.tar", archive.name)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    manifest = verify_archive(archive)
    assert manifest.counts["studies"] == 2 and manifest.counts["instances"] == 12
    assert manifest.counts["storage_files"] >= 12
    assert manifest.format_version == 1 and manifest.created_at and manifest.hub_version
    assert manifest.qi_schema_revision
    for secret in ("ORTHANC_PASSWORD", "POSTGRES_PASSWORD"):
        assert stack.values[secret] not in archive.name
    assert [p for p, m, _ in list_backups(tmp_path / "backups") if m] == [archive]

    # Damage everything the backup covers: studies, destinations, QI rows, stray files.
    rest = stack.orthanc.rest
    assert rest is not None
    rest.delete(f"/patients/{rest.get('/patients')[0]}")
    rest.delete("/modalities/PACS")
    engine = create_engine(stack.settings.pg_url())
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE studies, series, events, routing_jobs, job_series, audit_log CASCADE"))
    engine.dispose()
    (stack.settings.dicom_storage / "stray-file").write_text("not DICOM")

    # Restore onto a bare checkout: with no .env, the archive's own is installed (mode 600).
    env_text = stack.env_file.read_text()
    stack.env_file.unlink()
    control = HarnessControl(stack)
    restored = restore_backup(archive, stack.env_file, control, check_timeout=60)
    assert stack.env_file.read_text() == env_text
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
    assert control.calls == ["stop", "start"]
    assert restored.counts == manifest.counts

    after_orthanc = orthanc_snapshot(stack.orthanc)
    assert after_orthanc["studies"] == before_orthanc["studies"]
    assert after_orthanc["files"] == before_orthanc["files"], "DICOM files differ after the restore"
    assert after_orthanc["modalities"]["PACS"]["Port"] == before_orthanc["modalities"]["PACS"]["Port"]
    assert qi_snapshot(stack.settings) == before_qi
    assert not (stack.settings.dicom_storage / "stray-file").exists()


def run_restore_cli(archive: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    return subprocess.run([sys.executable, "-m", "ops.tooling.backup", "restore", str(archive), "--yes"],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120, check=False)


def test_corrupt_truncated_and_foreign_archives_are_refused_with_nothing_changed(
    stack: MiniStack, tmp_path: Path
) -> None:
    archive = create_backup(stack.settings, stack.env_file, tmp_path / "backups")
    # `make backup FILE=site-a`: the operator's name, listed with the dated ones, never overwritten.
    named = create_backup(stack.settings, stack.env_file, tmp_path / "backups", name="site-a")
    assert named == tmp_path / "backups" / "site-a.tar" and verify_archive(named).counts["studies"] == 2
    assert [p for p, m, _ in list_backups(tmp_path / "backups") if m] == [archive, named]
    with pytest.raises(BackupError, match="exists already"):
        create_backup(stack.settings, stack.env_file, tmp_path / "backups", name="site-a.tar")
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("storage/"))
        offset = member.offset_data + 200

    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        tar.add(stack.env_file, arcname="etc/something.conf")
    no_manifest = tmp_path / "no-manifest.tar"
    with tarfile.open(archive) as src, tarfile.open(no_manifest, "w") as dst:
        for m in src.getmembers():
            if m.name != MANIFEST:
                dst.addfile(m, src.extractfile(m))
    not_tar = tmp_path / "random.tar"
    not_tar.write_bytes(os.urandom(4096))

    before = orthanc_snapshot(stack.orthanc)
    expectations = {
        corrupt: "checksum mismatch",
        truncated: "truncated",
        foreign: "not a hub backup",
        no_manifest: "no manifest.json",
        not_tar: "corrupt or truncated",
    }
    for bad, message in expectations.items():
        result = run_restore_cli(bad, stack.env_file)
        assert result.returncode == 3, (bad.name, result.stdout, result.stderr)
        assert "refusing to restore" in result.stderr and message in result.stderr, (bad.name, result.stderr)
        assert "nothing was changed" in result.stderr
    # The stack was never stopped and holds exactly what it held.
    assert stack.orthanc.proc is not None and stack.orthanc.proc.poll() is None
    assert stack.worker is not None and stack.worker.health()
    assert orthanc_snapshot(stack.orthanc) == before
