"""The backup round trip on the full native stack, through the make targets.

A stack (supervisord: PostgreSQL, Orthanc, worker, app) routes studies to a real PACS;
`make backup`; `make uninstall`; a fresh install with new secrets and no destinations;
`make restore`; then Orthanc holds the same studies with byte-identical DICOM files,
the QI tables and views give the same rows, and the destinations are back. And a move
of the storage paths: refused by `make start`, done by `make migrate-storage`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from core.envfile import GENERATED_SECRETS, generate_secret
from core.settings import PROJECT_ROOT, Settings, load_settings
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.stack import make_pg_base, make_values, remove_tree, write_env
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration

RULES = """
version: 1
rules:
  - name: everything-to-pacs
    when: {kind: original}
    then: {deliver_to: [PACS], payload: matched}
"""
COMPARED_TABLES = ("studies", "series", "events", "routing_jobs", "job_series", "audit_log", "app_users",
                   "qi_study", "qi_delivery", "qi_attempt")


def target(name: str, env_file: Path, *variables: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`make <name>`; while the main Makefile is absent, the module it would run."""
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "STACK_MODE": "native"}
    if (PROJECT_ROOT / "Makefile").exists():
        argv = ["make", "--no-print-directory", "-C", str(PROJECT_ROOT), name, *variables]
    elif name in ("run", "start", "stop", "status"):
        argv = [str(PROJECT_ROOT / ".venv" / "bin" / "python"), "-m", "ops.stack", "--mode", "native", name]
    else:
        argv = ["make", "--no-print-directory", "-C", str(PROJECT_ROOT), "-f", "mk/tooling.mk", name, *variables]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    base = make_pg_base()  # reachable by the postgres user
    rules = tmp_path / "routing.yml"
    rules.write_text(RULES)
    values = make_values(base, base / "pgdata", STATE_DIR=str(base / "state"), ROUTING_RULES=str(rules))
    env_file = tmp_path / "site" / ".env"
    env_file.parent.mkdir()
    try:
        yield {"values": values, "env": env_file, "base": base}
    finally:
        if env_file.exists():
            target("stop", env_file)
        remove_tree(base)


def orthanc_snapshot(settings: Settings) -> dict[str, Any]:
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    with httpx.Client(base_url=settings.orthanc_url, auth=auth, timeout=30) as http:
        studies = sorted(http.get(f"/studies/{s}").json()["MainDicomTags"]["StudyInstanceUID"]
                         for s in http.get("/studies").json())
        files = {i: hashlib.sha256(http.get(f"/instances/{i}/file").content).hexdigest()
                 for i in http.get("/instances").json()}
        modalities = http.get("/modalities", params={"expand": ""}).json()
    return {"studies": studies, "files": files,
            "modalities": {k: (v["AET"], v["Host"], v["Port"]) for k, v in modalities.items()}}


def qi_snapshot(settings: Settings) -> dict[str, list[str]]:
    engine = create_engine(settings.pg_url())
    try:
        with engine.connect() as conn:
            return {t: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{t}"')).all())) for t in COMPARED_TABLES}
    finally:
        engine.dispose()


def test_backup_uninstall_fresh_install_restore(site: dict[str, Any], make_pacs: Callable[..., StorageSCP],
                                                tmp_path: Path) -> None:
    env_file: Path = site["env"]
    pacs = make_pacs("PACS")
    write_env({**site["values"], "MODALITY_PACS": f"PACS|127.0.0.1|{pacs.port}"}, env_file)
    ok(target("run", env_file, timeout=900))
    seeded = ok(target("seed-modalities", env_file))
    assert "created" in seeded
    settings = load_settings(env_file)
    for description in ("CHEST PA", "HAND LEFT"):
        assert send_datasets(make_study(2, 2, description), "127.0.0.1", settings.dicom_port, "MOD1",
                             settings.orthanc_aet) == [0] * 4
    engine = create_engine(settings.pg_url())
    try:
        def delivered() -> bool:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM routing_jobs WHERE state = 'succeeded'")).scalar() == 2
        wait_until(delivered, timeout=90, what="both studies routed by the worker")
    finally:
        engine.dispose()
    assert pacs.instance_count == 8
    before_orthanc = orthanc_snapshot(settings)
    before_qi = qi_snapshot(settings)
    assert len(before_orthanc["studies"]) == 2 and len(before_orthanc["files"]) == 8
    assert len(before_qi["qi_study"]) == 2

    out = ok(target("backup", env_file))
    archives = sorted((settings.state_dir / "backups").glob("hub-backup-*.tar"))
    assert len(archives) == 1 and str(archives[0]) in out
    assert stat.S_IMODE(archives[0].stat().st_mode) == 0o600
    assert archives[0].name in ok(target("backup-list", env_file))
    kept = tmp_path / archives[0].name
    shutil.copy2(archives[0], kept)

    refused = target("uninstall", env_file)  # no terminal and no CONFIRM: nothing happens
    assert refused.returncode != 0 and settings.dicom_storage.exists()
    ok(target("uninstall", env_file, "CONFIRM=uninstall"))
    assert not env_file.exists() and not settings.dicom_storage.exists()
    assert not settings.postgres_storage.exists() and not settings.state_dir.exists()

    # A fresh install on the same paths: new secrets, no destinations in .env.
    fresh = {**site["values"], **{k: generate_secret() for k in GENERATED_SECRETS}}
    write_env(fresh, env_file)
    ok(target("run", env_file, timeout=900))
    settings = load_settings(env_file)
    assert orthanc_snapshot(settings)["studies"] == []

    restore_out = ok(target("restore", env_file, f"FILE={kept}", "CONFIRM=yes", timeout=900))
    assert "restore complete" in restore_out
    after_orthanc = orthanc_snapshot(settings)
    assert after_orthanc["studies"] == before_orthanc["studies"]
    assert after_orthanc["files"] == before_orthanc["files"], "DICOM file checksums differ"
    assert after_orthanc["modalities"] == before_orthanc["modalities"], "destinations are not back"
    assert qi_snapshot(settings) == before_qi
    health = httpx.get(f"http://127.0.0.1:{settings.routing_api_port}/health", timeout=10)
    assert health.status_code == 200
    ok(target("stop", env_file))


def test_moving_storage_is_refused_then_done_by_migrate_storage(site: dict[str, Any]) -> None:
    """Issue 18: edit the two paths in .env; `make start` refuses (the new place is empty);
    `make migrate-storage` moves the data with checksums and starts; the old copy stays
    until CONFIRM_DELETE_OLD=yes."""
    env_file: Path = site["env"]
    write_env(site["values"], env_file)
    ok(target("run", env_file, timeout=900))
    settings = load_settings(env_file)
    assert send_datasets(make_study(1, 3, "KNEE"), "127.0.0.1", settings.dicom_port, "MOD1",
                         settings.orthanc_aet) == [0] * 3
    wait_until(lambda: len(orthanc_snapshot(settings)["files"]) == 3, timeout=30, what="instances stored")
    before = orthanc_snapshot(settings)

    new_dicom, new_pg = site["base"] / "new-disk" / "dicom", site["base"] / "new-disk" / "pgdata"
    write_env({**site["values"], "DICOM_STORAGE": str(new_dicom), "POSTGRES_STORAGE": str(new_pg)}, env_file)
    refused = target("start", env_file)
    assert refused.returncode != 0
    for expected in (str(settings.dicom_storage), str(new_dicom), str(settings.postgres_storage), str(new_pg),
                 "make migrate-storage"):
        assert expected in refused.stderr, refused.stderr
    assert not new_dicom.exists() and not new_pg.exists()

    out = ok(target("migrate-storage", env_file, timeout=900))
    assert "copy complete and verified" in out
    assert re.search(r"DICOM_STORAGE: (\d+)/\1 files, .*\(100%\)", out) and "POSTGRES_STORAGE: " in out
    moved = load_settings(env_file)
    assert orthanc_snapshot(moved) == before
    assert (new_pg / "PG_VERSION").is_file() and any(new_dicom.iterdir())
    assert "old copy is kept" in ok(target("migrate-storage", env_file))
    assert (settings.postgres_storage / "PG_VERSION").is_file() and any(settings.dicom_storage.iterdir())

    ok(target("migrate-storage", env_file, "CONFIRM_DELETE_OLD=yes"))
    assert not settings.dicom_storage.exists() and not settings.postgres_storage.exists()
    assert orthanc_snapshot(moved) == before
    ok(target("stop", env_file))


def test_upgrade_migrates_forward_and_keeps_data_and_rebuild_restarts(site: dict[str, Any]) -> None:
    from alembic import command

    from core.db import alembic_config, make_engine

    env_file: Path = site["env"]
    write_env(site["values"], env_file)
    ok(target("run", env_file, timeout=900))
    settings = load_settings(env_file)
    assert send_datasets(make_study(1, 2, "CHEST"), "127.0.0.1", settings.dicom_port, "MOD1",
                         settings.orthanc_aet) == [0] * 2
    engine = make_engine(settings.pg_url())  # pre-ping: PostgreSQL restarts during the upgrade

    def scalar(query: str) -> Any:
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar()

    try:
        wait_until(lambda: scalar("SELECT count(*) FROM studies WHERE stable_at IS NOT NULL") == 1, timeout=60,
                   what="the study recorded as stable")
        studies_before = scalar("SELECT string_agg(study_uid, ',') FROM studies")
        command.downgrade(alembic_config(settings.pg_url()), "0001")  # an older schema, as before an upgrade
        assert scalar("SELECT version_num FROM alembic_version") == "0001"

        out = ok(target("upgrade", env_file, timeout=900))
        assert "safety backup" in out and "upgrade complete" in out
        assert scalar("SELECT version_num FROM alembic_version") != "0001"
        assert scalar("SELECT count(*) FROM qi_study") == 1, "the QI views are back over the kept data"
        assert scalar("SELECT string_agg(study_uid, ',') FROM studies") == studies_before
        assert list((settings.state_dir / "backups").glob("hub-backup-*.tar"))
        assert len(orthanc_snapshot(settings)["files"]) == 2

        out = ok(target("rebuild", env_file, timeout=900))
        assert "rebuild complete" in out
        assert len(orthanc_snapshot(settings)["files"]) == 2
        assert httpx.get(f"http://127.0.0.1:{settings.routing_api_port}/health", timeout=10).status_code == 200
        ok(target("clean", env_file))
        assert settings.dicom_storage.exists() and env_file.exists() and (settings.postgres_storage / "PG_VERSION").exists()
    finally:
        engine.dispose()
