"""`./orthanc` operations commands against a real stack: the harness's PostgreSQL, an
Orthanc of this module's own, a real worker, a real PACS and a destination that is down.

Every command runs as the real executable (`./orthanc ...`) with HUB_ENV_FILE, and its
exit code is checked against the documented contract (ops.tooling.exitcodes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.settings import PROJECT_ROOT, Settings, settings_from_values
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, PostgresServer, QiDatabase, write_env
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess
from testkit.synthetic import make_study

pytestmark = pytest.mark.integration

RULES = """
version: 1
rules:
  - name: chest-to-pacs
    when: {kind: original, all: [{tag: StudyDescription, contains: CHEST}]}
    then: {deliver_to: [PACS], payload: matched}
  - name: hand-to-refusing
    when: {kind: original, all: [{tag: StudyDescription, contains: HAND}]}
    then: {deliver_to: [REFUSEPACS], payload: matched}
"""


@dataclass
class CliStack:
    settings: Settings
    env_file: Path
    orthanc: OrthancServer
    worker: WorkerProcess
    chest_uid: str
    chest_accession: str
    hand_uid: str

    def engine(self):  # noqa: ANN201
        return create_engine(self.settings.pg_url())


@pytest.fixture
def cli_stack(pg_server: PostgresServer, qi_db: QiDatabase, hub_values: dict[str, str], tmp_path: Path,
              make_pacs: Callable[..., StorageSCP]) -> Iterator[CliStack]:
    rules = tmp_path / "routing.yml"
    rules.write_text(RULES)
    state = tmp_path / "state"
    values = {
        **hub_values,
        "QI_DB": qi_db.name,
        "POSTGRES_DB": f"orthanc_cli_{uuid.uuid4().hex[:10]}",
        "DICOM_STORAGE": str(tmp_path / "storage"),
        "STATE_DIR": str(state),
        "ORTHANC_WEB_PORT": str(free_port()),
        "DICOM_PORT": str(free_port()),
        "ROUTING_API_PORT": str(free_port()),
        "WORKER_HEALTH_PORT": str(free_port()),
        "ROUTING_RULES": str(rules),
        "RETRY_BASE": "0.2",
        "RETRY_CAP": "0.5",
        "RETRY_MAX_ATTEMPTS": "2",
    }
    settings = settings_from_values(values)
    pg_server.create_database(settings.postgres_db, owner=settings.postgres_user)
    env_file = write_env(values, tmp_path / ".env")
    orthanc = OrthancServer(settings, tmp_path / "orthanc")
    orthanc.start()
    worker = None
    closed = None
    try:
        pacs = make_pacs("PACS")
        assert orthanc.rest is not None
        orthanc.rest.put_modality("PACS", "PACS", pacs.port)
        # A bound socket that never listens: connections are refused, and no other
        # process can take the port while the test runs.
        closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        closed.bind(("127.0.0.1", 0))
        orthanc.rest.put_modality("DOWNPACS", "DOWNPACS", closed.getsockname()[1])
        # A PACS that answers C-ECHO and refuses every store: its job spends its attempts
        # and ends dead (a PACS that is down would only be put on an outage hold).
        refusing = make_pacs("REFUSEPACS", mode="refuse")
        orthanc.rest.put_modality("REFUSEPACS", "REFUSEPACS", refusing.port)
        (state / "logs").mkdir(parents=True)
        # `./orthanc status` reads the worker's own /health on WORKER_HEALTH_PORT, as on a stack.
        worker = WorkerProcess(values, state / "logs", "worker", behind_api=True).start()
        chest = make_study(1, 2, "CHEST PA")
        hand = make_study(1, 1, "HAND LEFT")
        for study in (chest, hand):
            assert send_datasets(study, "127.0.0.1", settings.dicom_port, "MOD1", settings.orthanc_aet) == [0] * len(
                study)
        engine = create_engine(settings.pg_url())
        try:
            try:
                wait_until(lambda: _states(engine) == ["dead", "succeeded"], timeout=90,
                           what="one delivered and one dead job")
            except AssertionError:
                raise AssertionError(f"job states {_states(engine)}; worker log:\n"
                                     f"{worker.log.read_text()[-3000:]}") from None
        finally:
            engine.dispose()
        yield CliStack(settings, env_file, orthanc, worker, chest[0].StudyInstanceUID,
                       str(chest[0].AccessionNumber), hand[0].StudyInstanceUID)
    finally:
        if worker is not None:
            worker.stop()
        if closed is not None:
            closed.close()
        orthanc.stop()
        pg_server.drop_database(settings.postgres_db)


def _states(engine) -> list[str]:  # noqa: ANN001
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT state FROM routing_jobs")).scalars().all())


def orthanc_cli(stack: CliStack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(stack.env_file), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("STACK_MODE", None)
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def job_id(stack: CliStack, state: str) -> int:
    engine = stack.engine()
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT id FROM routing_jobs WHERE state = :s ORDER BY id LIMIT 1"),
                                    {"s": state}).scalar_one())
    finally:
        engine.dispose()


def test_every_command_has_help() -> None:
    for command in ("status", "studies", "study", "destinations", "test", "queue", "retry", "cancel", "hold",
                    "release", "alerts", "token", "logs", "shell", "db"):
        result = subprocess.run([str(PROJECT_ROOT / "orthanc"), command, "--help"], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0 and "Usage" in result.stdout, (command, result.stderr)


def test_status_studies_study_queue_and_logs(cli_stack: CliStack) -> None:
    result = orthanc_cli(cli_stack, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Orthanc" in result.stdout and "1 dead" in result.stdout
    as_json = json.loads(orthanc_cli(cli_stack, "status", "--json").stdout)
    assert as_json["healthy"] is True and as_json["orthanc"]["studies"] == 2 and as_json["queue"]["dead"] == 1

    listing = orthanc_cli(cli_stack, "studies")
    assert listing.returncode == 0, listing.stderr
    assert "CHEST PA" in listing.stdout and "HAND LEFT" in listing.stdout
    assert "delivered" in listing.stdout and "failed" in listing.stdout
    assert "SYNTHETIC^PATIENT" not in listing.stdout
    found = orthanc_cli(cli_stack, "studies", "--search", cli_stack.chest_accession)
    assert found.returncode == 0 and "CHEST PA" in found.stdout and "HAND LEFT" not in found.stdout
    assert orthanc_cli(cli_stack, "studies", "--search", "NO-SUCH-ACCESSION").returncode == 5
    assert orthanc_cli(cli_stack, "studies", "--status", "bogus").returncode == 2

    for key in (cli_stack.chest_uid, cli_stack.chest_accession):
        detail = orthanc_cli(cli_stack, "study", key)
        assert detail.returncode == 0, detail.stderr
        for expected in ("Study Received", "Routed to Destinations", "Timeline", "delivered", "PACS", "succeeded"):
            assert expected in detail.stdout, (expected, detail.stdout)
    assert orthanc_cli(cli_stack, "study", "1.2.3.4.5.404").returncode == 5

    queue = orthanc_cli(cli_stack, "queue")
    assert queue.returncode == 0 and "dead: 1" in queue.stdout and "REFUSEPACS" in queue.stdout
    assert "succeeded" in orthanc_cli(cli_stack, "queue", "--state", "succeeded").stdout

    logs = orthanc_cli(cli_stack, "logs", "worker", "-n", "5")
    assert logs.returncode == 0 and logs.stdout.strip()
    assert orthanc_cli(cli_stack, "logs", "nosuch").returncode == 2
    assert orthanc_cli(cli_stack, "logs", "orthanc").returncode == 5  # this test's Orthanc logs elsewhere

    cli_stack.worker.stop()
    down = orthanc_cli(cli_stack, "status")
    assert down.returncode == 4 and "DOWN" in down.stdout


def test_destinations_and_echo(cli_stack: CliStack) -> None:
    listing = orthanc_cli(cli_stack, "destinations")
    assert listing.returncode == 1, "a failed echo must give exit 1"
    assert "PACS" in listing.stdout and "DOWNPACS" in listing.stdout and "failed" in listing.stdout
    assert orthanc_cli(cli_stack, "destinations", "--no-echo").returncode == 0
    ok = orthanc_cli(cli_stack, "test", "PACS")
    assert ok.returncode == 0 and "ok in" in ok.stdout and " ms" in ok.stdout
    bad = orthanc_cli(cli_stack, "test", "DOWNPACS", "--timeout", "2")
    assert bad.returncode == 1 and "failed" in bad.stderr
    assert orthanc_cli(cli_stack, "test", "NOPE").returncode == 5


def test_retry_and_cancel_are_audited_with_exit_codes(cli_stack: CliStack) -> None:
    dead = job_id(cli_stack, "dead")
    done = job_id(cli_stack, "succeeded")
    cli_stack.worker.stop()  # keep the retried job still for the assertions

    assert orthanc_cli(cli_stack, "retry").returncode == 2
    assert orthanc_cli(cli_stack, "retry", "999999").returncode == 5
    assert orthanc_cli(cli_stack, "retry", str(done)).returncode == 1
    retried = orthanc_cli(cli_stack, "retry", str(dead))
    assert retried.returncode == 0, retried.stderr
    cancelled = orthanc_cli(cli_stack, "cancel", str(dead))
    assert cancelled.returncode == 0, cancelled.stderr
    assert orthanc_cli(cli_stack, "cancel", str(done)).returncode == 1
    assert orthanc_cli(cli_stack, "cancel", "999999").returncode == 5
    engine = cli_stack.engine()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE routing_jobs SET state = 'dead' WHERE id = :id"), {"id": dead})
        bulk = orthanc_cli(cli_stack, "retry", "--dead")
        assert bulk.returncode == 0 and "1 dead job(s)" in bulk.stdout
        with engine.connect() as conn:
            actions = conn.execute(text("SELECT action, source FROM audit_log ORDER BY id")).all()
            state = conn.execute(text("SELECT state FROM routing_jobs WHERE id = :id"), {"id": dead}).scalar_one()
    finally:
        engine.dispose()
    assert [tuple(a) for a in actions] == [("job.retry", "cli"), ("job.cancel", "cli"), ("job.retry", "cli")]
    assert state == "queued"


def test_shell_and_db_reach_the_databases_and_orthanc(cli_stack: CliStack) -> None:
    db = orthanc_cli(cli_stack, "db", "-c", "SELECT count(*) FROM studies")
    assert db.returncode == 0, db.stderr
    assert "2" in db.stdout
    assert orthanc_cli(cli_stack, "db", "-c", "SELECT * FROM no_such_table").returncode == 1
    shell = orthanc_cli(cli_stack, "shell", "-c",
                        'psql -tAc "SELECT count(*) FROM routing_jobs" && '
                        'curl -sf --netrc-file "$NETRC" "$ORTHANC_URL/system" && echo "$PGPASSFILE"')
    assert shell.returncode == 0, shell.stderr
    lines = shell.stdout.strip().splitlines()
    assert lines[0] == "2"
    assert '"DicomAet"' in shell.stdout
    assert not Path(lines[-1]).exists(), "the private credentials file must be removed afterwards"
    assert cli_stack.settings.postgres_password.get_secret_value() not in shell.stdout + shell.stderr
    assert orthanc_cli(cli_stack, "shell", "-c", "exit 7").returncode == 7


def test_invalid_configuration_exits_3(tmp_path: Path, hub_values: dict[str, str]) -> None:
    env_file = write_env({**hub_values, "ORTHANC_AET": "WAY_TOO_LONG_AN_AE_TITLE"}, tmp_path / ".env")
    env = {**os.environ, "HUB_ENV_FILE": str(env_file)}
    for command in (["status"], ["studies"], ["queue"], ["test", "PACS"]):
        result = subprocess.run([str(PROJECT_ROOT / "orthanc"), *command], capture_output=True, text=True, env=env,
                                timeout=60, check=False)
        assert result.returncode == 3, (command, result.stderr)
        assert "ORTHANC_AET" in result.stderr
