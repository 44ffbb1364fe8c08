"""Disk pressure: DICOM_STORAGE on a small dedicated filesystem (a tmpfs) fills up.

What Orthanc 1.10.1 does then (measured here): every new instance is refused, with
C-STORE status 0xA700 and, over REST, HTTP 500 "Cannot write to file" (OrthancStatus
14); its log says "Exception while storing DICOM: Cannot write to file". It keeps
answering REST, records nothing in its index for a refused instance and deletes
nothing (recycling is off). The worker keeps delivering what was accepted (reading
from a full disk works), /health and /metrics report the low disk, the app shows a
warning, and deleting delivered studies as docs/operations.md says lets Orthanc
accept studies again.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from streamlit.testing.v1 import AppTest

from core import auth
from core.disk import MIB
from core.operations import hold_destination, release_destination
from core.settings import PROJECT_ROOT, Settings, SettingsError, settings_from_values
from ops.orthanc_config import COMPOSE, render_orthanc_config
from ops.stack.probes import probe_worker
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, PostgresServer, QiDatabase, write_env
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, WorkerProcess, all_jobs_final, jobs
from testkit.synthetic import make_study
from tests.integration.app.conftest import (  # noqa: F401 - navigation_mode is an autouse fixture
    USERS,
    clear_app_caches,
    navigation_mode,
    new_app,
)
from tests.reliability.conftest import OUTLASTING_RETRIES
from worker.storage import StorageWatch

DISK_MB = 12  # the tmpfs holding DICOM_STORAGE
WARN_MB = 3  # DISK_FREE_WARN_MB of this stack
REFUSED = 0xA700  # DIMSE "Refused: out of resources"
OPERATIONS_DOC = PROJECT_ROOT / "docs" / "operations.md"


# --- fixtures -------------------------------------------------------------------------


def mount_tmpfs(path: Path, size_mb: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)


def resize_tmpfs(path: Path, size_mb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(path)], check=True, capture_output=True,
                   timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs, unmounted afterwards whatever happened."""
    path = tmp_path / "dicom"
    path.mkdir()
    mount_tmpfs(path, DISK_MB)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=60)


class Stack:
    """Orthanc on the small disk, a worker routing everything to a PACS, and their settings."""

    def __init__(self, settings: Settings, orthanc: OrthancServer, worker: WorkerProcess, pacs: StorageSCP,
                 engine: Engine, env_file: Path):
        self.settings = settings
        self.orthanc = orthanc
        self.worker = worker
        self.pacs = pacs
        self.db = engine
        self.env_file = env_file

    @property
    def rest(self) -> Any:
        assert self.orthanc.rest is not None
        return self.orthanc.rest

    def send(self, datasets: list[Dataset]) -> list[int]:
        return send_datasets(datasets, "127.0.0.1", self.settings.dicom_port, "MODALITY1", self.settings.orthanc_aet)

    def storage(self) -> dict[str, Any]:
        return dict(self.worker.health()["storage"])

    def free_gauge(self) -> float:
        body = httpx.get(self.worker.health_url.replace("/health", "/metrics"), timeout=5).text
        match = re.search(r"^hub_dicom_storage_free_bytes (\S+)$", body, re.M)
        assert match, "no hub_dicom_storage_free_bytes gauge"
        return float(match.group(1))

    def stored_sops(self) -> set[str]:
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.rest.get("/instances", expand="")}

    def worker_log(self) -> str:
        return self.worker.log.read_text(errors="replace")


@pytest.fixture
def stack(small_disk: Path, pg_server: PostgresServer, qi_db: QiDatabase, hub_values: dict[str, str],
          tmp_path: Path, make_pacs: Callable[..., StorageSCP]) -> Iterator[Stack]:
    """A dedicated Orthanc (own index database) on the tmpfs; the PACS starts *down*."""
    rules = tmp_path / "routing.yml"
    rules.write_text(ALL_TO_PACS)
    values = {
        **hub_values,
        "QI_DB": qi_db.name,
        "POSTGRES_DB": f"orthanc_disk_{uuid.uuid4().hex[:10]}",
        "DICOM_STORAGE": str(small_disk),
        "STATE_DIR": str(tmp_path / "state"),
        "ORTHANC_WEB_PORT": str(free_port()),
        "DICOM_PORT": str(free_port()),
        "ROUTING_API_PORT": str(free_port()),
        "ROUTING_RULES": str(rules),
        "DISK_FREE_WARN_MB": str(WARN_MB),
        **OUTLASTING_RETRIES,
        "POLL_INTERVAL": "0.2",
    }
    settings = settings_from_values(values)
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    orthanc = OrthancServer(settings, tmp_path / "orthanc")
    worker = None
    engine = create_engine(settings.pg_url())
    try:
        orthanc.start()
        pacs = make_pacs("PACS")
        pacs.stop()
        assert orthanc.rest is not None
        orthanc.rest.put_modality("PACS", "PACS", pacs.port)
        worker = WorkerProcess(values, tmp_path, "worker").start()
        yield Stack(settings, orthanc, worker, pacs, engine, write_env(values, tmp_path / "stack.env"))
    finally:
        if worker is not None:
            worker.stop()
        orthanc.stop()
        engine.dispose()
        pg_server.drop_database(settings.postgres_db)


# --- helpers --------------------------------------------------------------------------


def big(datasets: list[Dataset]) -> list[Dataset]:
    """Half a MiB of pixels per instance, so that a few studies fill the disk."""
    rng = np.random.default_rng()
    for ds in datasets:
        ds.Rows = ds.Columns = 512
        ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    return datasets


def sops(datasets: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def documented(language: str) -> str:
    """The one `language` block of docs/operations.md's procedure for freeing space."""
    section = OPERATIONS_DOC.read_text(encoding="utf-8").split("## Disk space and recycling", 1)[1]
    blocks = re.findall(rf"```{language}\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert len(blocks) == 1, f"one {language} block in the section"
    return str(blocks[0])


def purgeable(stack: Stack) -> set[str]:
    """Orthanc ids the documented query offers for deletion."""
    with stack.db.connect() as conn:
        return {row[0] for row in conn.execute(text(documented("sql")))}


def run_documented_purge(stack: Stack, workdir: Path) -> tuple[set[str], str]:
    """Run the documented commands verbatim (but for ./orthanc's path); return the listed ids and output."""
    workdir.mkdir()
    (workdir / "purge.sql").write_text(documented("sql"))
    script = documented("sh").replace("./orthanc ", f"{PROJECT_ROOT / 'orthanc'} ")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "HUB_ENV_FILE": str(stack.env_file)}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set((workdir / "deletable.txt").read_text().split()), proc.stdout


def age_every_study(engine: Engine, days: int) -> None:
    """Move every study's last reception back; retried, as the worker updates the same rows."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE studies SET last_received_at = last_received_at - make_interval(days => :d)"),
                             {"d": days})
            return
        except OperationalError as exc:  # a deadlock with the worker's status updates
            if attempt == 4 or "deadlock" not in str(exc):
                raise


def overview(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app's Overview for a viewer, rendered against this stack's real state."""
    monkeypatch.setenv("HUB_ENV_FILE", str(stack.env_file))
    clear_app_caches()
    try:
        at = new_app("viewer")
        at.run()
        at.switch_page("pages/overview.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    finally:
        clear_app_caches()


def storage_card(at: AppTest) -> str:
    lines = [str(m.value) for m in at.markdown]
    return next(line for line in lines if line.startswith("**DICOM storage**"))


# --- the disk fills up ------------------------------------------------------------------


@pytest.mark.integration
def test_a_full_disk_refuses_new_data_reports_it_and_loses_nothing(
    stack: Stack, small_disk: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with stack.db.begin() as conn:
        auth.create_user(conn, USERS["viewer"], "viewer-password-1", "viewer", actor="test", source="setup",
                         rounds=4)
    assert stack.storage()["status"] == "ok"

    # 1. One-instance studies until Orthanc refuses one: the disk is full.
    accepted: set[str] = set()
    refused_study: list[Dataset] = []
    for i in range(3 * DISK_MB):
        study = big(make_study(1, 1, f"CR DISK {i}"))
        statuses = stack.send(study)
        if statuses == [0]:
            accepted |= sops(study)
            continue
        assert statuses == [REFUSED], statuses
        refused_study = study
        break
    assert refused_study and len(accepted) >= DISK_MB, f"{len(accepted)} accepted before the refusal"
    assert shutil.disk_usage(small_disk).free == 0

    # 2. A modality's study cut in the middle: a little space comes back (an operator
    # grows the filesystem by 1 MiB), the first instance fits, the others are refused.
    resize_tmpfs(small_disk, DISK_MB + 1)
    partial = big(make_study(1, 3, "CR CUT BY THE FULL DISK"))
    statuses = stack.send(partial)
    assert statuses == [0, REFUSED, REFUSED], statuses
    accepted |= {str(partial[0].SOPInstanceUID)}
    n_studies = len(accepted)  # one accepted instance per study, the cut one included
    assert stack.send(big(make_study(1, 1, "CR STILL FULL"))) == [REFUSED]

    # 3. Orthanc: still answering, the refusal in its log, nothing recorded for a refused
    # instance, nothing deleted (recycling off), REST uploads refused too.
    assert stack.rest.http.get("/system").status_code == 200
    log = stack.orthanc.log_text()
    assert "Exception while storing DICOM: Cannot write to file" in log
    assert "No limit on the number of stored patients" in log and "No limit on the size of the storage area" in log
    assert stack.stored_sops() == accepted
    buf = io.BytesIO()
    big(make_study(1, 1, "CR OVER REST"))[0].save_as(buf, enforce_file_format=True)
    upload = stack.rest.http.post("/instances", content=buf.getvalue())
    assert upload.status_code == 500 and upload.json()["OrthancStatus"] == 14, upload.text
    assert stack.stored_sops() == accepted

    # 4. The worker reports it: /health, /metrics, one log warning, `make status`'s probe.
    storage = wait_until(lambda: (s := stack.storage())["status"] == "low" and s, timeout=10,
                         what="the worker to report the low disk")
    assert storage["path"] == str(small_disk) and storage["warn_below_bytes"] == WARN_MB * MIB
    assert storage["free_bytes"] == shutil.disk_usage(small_disk).free < WARN_MB * MIB
    assert "is low" in storage["message"] and "Orthanc refuses new studies" in storage["message"]
    assert stack.worker.health()["status"] == "ok", "the worker itself still works"
    wait_until(lambda: stack.free_gauge() == shutil.disk_usage(small_disk).free, timeout=10, what="free gauge")
    probe = probe_worker(settings_from_values(stack.worker.values))  # the worker's own health port
    assert probe.ok and "is low" in probe.detail, probe

    # 5. The app shows it on the Overview.
    at = overview(stack, monkeypatch)
    assert ":orange[● Degraded]" in storage_card(at)
    warnings = [str(w.value) for w in at.warning]
    assert any(str(small_disk) in w and "is low" in w and "MiB free" in w for w in warnings), warnings

    # 6. Every accepted instance was routed; none is deliverable yet (the PACS is down),
    # so the documented purge query offers none of them, however old they are.
    def pacs_held() -> bool:  # the worker tried, found the PACS not answering, and holds it
        with stack.db.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM destination_holds WHERE kind = 'outage'")).scalar_one() == 1

    wait_until(lambda: len(jobs(stack.db)) == n_studies and pacs_held(),
               timeout=60, what="a job per accepted study, tried, the PACS on an outage hold")
    age_every_study(stack.db, days=30)
    assert purgeable(stack) == set()

    # 7. The PACS comes back: everything accepted is delivered, read from the full disk.
    stack.pacs.start()
    wait_until(lambda: all_jobs_final(stack.db, n_studies), timeout=90, what="every job final")
    assert {j["state"] for j in jobs(stack.db)} == {"succeeded"}
    assert set(stack.pacs.receipts) == accepted

    # 8. Freeing space the documented way: the listed studies, and only those, deleted.
    studies = set(stack.rest.get("/studies"))
    listed, output = run_documented_purge(stack, tmp_path / "purge")
    assert listed == studies and output.count("deleted ") == len(studies), output
    assert stack.rest.get("/studies") == []
    wait_until(lambda: stack.storage()["status"] == "ok", timeout=10, what="the worker to see free space")
    assert "is low" not in str([w.value for w in overview(stack, monkeypatch).warning])
    assert stack.worker_log().count("is low") == 1, "the low disk is logged once, not at every check"
    assert stack.worker_log().count("enough free space again") == 1

    # 9. The modality sends again what was refused: accepted and delivered.
    assert stack.send(refused_study) == [0]
    assert stack.send(partial) == [0, 0, 0]
    wait_until(lambda: sops(refused_study) | sops(partial) <= set(stack.pacs.receipts), timeout=60,
               what="the resent studies delivered")


# --- instances that arrive after their series was routed ---------------------------------


def routed_instances(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(routed_instances), 0) FROM series")).scalar_one())


@pytest.mark.integration
def test_a_series_completed_after_delivery_is_sent_again_complete(
    env: dict, workers: Callable[..., WorkerProcess], db: Engine, clean_orthanc: OrthancServer,
    make_pacs: Callable[..., StorageSCP], hub_settings: Settings, tmp_path: Path,
) -> None:
    """The modality sends the rest of a study cut by a full disk once space is back."""
    pacs = make_pacs("PACS")
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    workers({**env, "ROUTING_RULES": str(write_rules(tmp_path))})
    study = make_study(1, 4, "CR COMPLETED LATER")
    send = partial_sender(hub_settings)
    assert send(study[:2]) == [0, 0]
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 2, timeout=40, what="first delivery")
    assert send(study[2:]) == [0, 0]
    wait_until(lambda: pacs.instance_count == 4 and all_jobs_final(db, 2), timeout=40, what="the rest delivered")
    rows = jobs(db)
    assert [r["state"] for r in rows] == ["succeeded", "succeeded"]
    with db.connect() as conn:
        resend = conn.execute(text("SELECT detail FROM events WHERE type = 'resend'")).scalars().all()
        flags = conn.execute(text("SELECT job_id, is_resend FROM job_series ORDER BY job_id")).all()
    assert resend == [{"reason": "instances arrived after routing", "instances": 4}]
    assert [f.is_resend for f in flags] == [False, True]


@pytest.mark.integration
def test_a_series_growing_before_its_first_send_is_sent_once(
    env: dict, workers: Callable[..., WorkerProcess], db: Engine, clean_orthanc: OrthancServer,
    make_pacs: Callable[..., StorageSCP], hub_settings: Settings, tmp_path: Path,
) -> None:
    """A job not sent yet sends the whole series: no second job, no duplicate."""
    pacs = make_pacs("PACS")
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    with db.begin() as conn:  # the job waits, queued, while the series grows
        hold_destination(conn, "PACS", actor="test", source="cli")
    workers({**env, "ROUTING_RULES": str(write_rules(tmp_path))})
    study = make_study(1, 3, "CR GROWS WHILE QUEUED")
    send = partial_sender(hub_settings)
    assert send(study[:1]) == [0]
    wait_until(lambda: len(jobs(db)) == 1, timeout=40, what="the job queued")
    assert send(study[1:]) == [0, 0]
    wait_until(lambda: routed_instances(db) == 3, timeout=40, what="the grown series seen at its StableStudy")
    with db.begin() as conn:
        release_destination(conn, "PACS", actor="test", source="cli")
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 3, timeout=60, what="one complete delivery")
    assert len(jobs(db)) == 1 and pacs.duplicates() == {}


def write_rules(directory: Path) -> Path:
    path = directory / "routing.yml"
    path.write_text(ALL_TO_PACS)
    return path


def partial_sender(settings: Settings) -> Callable[[list[Dataset]], list[int]]:
    return lambda datasets: send_datasets(datasets, "127.0.0.1", settings.dicom_port, "MODALITY1",
                                          settings.orthanc_aet)


# --- recycling can never be switched on ----------------------------------------------------


@pytest.mark.parametrize("key", ["MAXIMUM_STORAGE_SIZE", "MAXIMUM_PATIENT_COUNT", "MAXIMUM_STORAGE_MODE",
                                 "ORTHANC__MAXIMUM_STORAGE_SIZE"])
def test_recycling_settings_are_refused_with_the_reason(hub_values: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_values({**hub_values, key: "1000"})
    assert f"{key}: Orthanc's recycling is never enabled" in str(err.value)
    assert "Disk space and recycling" in str(err.value)


def test_rendered_configuration_never_recycles(hub_values: dict[str, str]) -> None:
    config = render_orthanc_config(settings_from_values({**hub_values, "DISK_FREE_WARN_MB": "1"}))
    assert config["MaximumStorageSize"] == 0 and config["MaximumPatientCount"] == 0
    assert "MaximumStorageMode" not in config  # not an Orthanc 1.10.1 option (new in 1.11.2)


def test_compose_never_recycles_and_lets_worker_and_app_measure_the_disk(hub_values: dict[str, str]) -> None:
    services = yaml.safe_load((PROJECT_ROOT / "stack" / "docker-compose.yml").read_text())["services"]
    orthanc = services["orthanc"]
    # Compose's Orthanc reads the native stack's template, rendered by `init`.
    config = render_orthanc_config(settings_from_values(hub_values), target=COMPOSE)
    assert config["MaximumStorageSize"] == 0 and config["MaximumPatientCount"] == 0
    assert not [k for k in orthanc["environment"] if k.startswith("ORTHANC__")]
    assert "env_file" not in orthanc, ".env must not reach Orthanc's ORTHANC__* options"
    for name in ("worker", "app"):
        assert "${DICOM_STORAGE}:/var/lib/orthanc/db:ro" in services[name]["volumes"], name
        assert services[name]["environment"]["DICOM_STORAGE"] == "/var/lib/orthanc/db", name


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_disk_free_warn_mb_is_validated(hub_values: dict[str, str], value: str) -> None:
    with pytest.raises(SettingsError, match="DISK_FREE_WARN_MB"):
        settings_from_values({**hub_values, "DISK_FREE_WARN_MB": value})


def test_the_watch_logs_each_change_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // MIB
    low, fine = StorageWatch(tmp_path, free_mb + 1024), StorageWatch(tmp_path, 1)
    with caplog.at_level(logging.INFO, logger="worker.storage"):
        assert [fine.check().status for _ in range(3)] == ["ok"] * 3
        assert caplog.records == [], "no line while all is well"
        assert [low.check().status for _ in range(3)] == ["low"] * 3
        low.warn_below_mb = 1
        assert [low.check().status for _ in range(3)] == ["ok"] * 3
    assert [(r.levelname, "is low" in r.getMessage()) for r in caplog.records] == [
        ("WARNING", True), ("INFO", False)]
    gone = StorageWatch(tmp_path / "missing", 1).check()
    assert gone.status == "unknown" and "No such file" in gone.message
