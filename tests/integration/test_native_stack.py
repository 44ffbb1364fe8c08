"""End to end: the native stack's own commands (`python -m ops.stack`, what `make run`,
`make status` and `make stop` call) on free ports with a temporary `.env`.

It starts the real supervisord with PostgreSQL, Orthanc, the worker, the API, the app
and the viewer gateway, sends a study with DCMTK's storescu, reads it back through
Orthanc's REST API with the credentials from `.env` and through the viewer gateway with
an app login, and checks that `stop` leaves no process behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.envfile import GENERATED_SECRETS
from core.settings import PROJECT_ROOT, Settings, settings_from_values
from ops.stack import supervisor
from ops.stack.layout import SERVICES, StackLayout
from ops.stack.procscan import stack_processes
from testkit.harness.stack import make_pg_base, make_values, remove_tree, write_env
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study, write_datasets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STORESCU = "/usr/bin/storescu"  # DCMTK's (pynetdicom installs another one in the venv)


@dataclass
class NativeStack:
    values: dict[str, str]
    settings: Settings
    env_file: Path

    @property
    def layout(self) -> StackLayout:
        return StackLayout.for_settings(self.settings)

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HUB_ENV_FILE": str(self.env_file)}
        return subprocess.run(
            [sys.executable, "-m", "ops.stack", "--mode", "native", *args],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
        )

    def assert_no_secret(self, text: str) -> None:
        for key in GENERATED_SECRETS:
            assert self.values[key] not in text, f"{key} was printed"


@pytest.fixture
def native_stack() -> Iterator[NativeStack]:
    # Under /tmp with o+x: the `postgres` OS user must reach its data directory.
    base = make_pg_base()
    values = make_values(
        base, base / "postgres-data",
        DICOM_STORAGE=str(base / "orthanc-storage"), STATE_DIR=str(base / "state"),
    )
    stack = NativeStack(values, settings_from_values(values), write_env(values, base / ".env"))
    try:
        yield stack
    finally:
        if supervisor.is_up(stack.layout) or stack_processes(stack.settings, stack.layout, stack.env_file):
            stack.command("stop")
        remove_tree(base)


def _orthanc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_run_store_status_stop(native_stack: NativeStack, tmp_path: Path) -> None:
    stack, s = native_stack, native_stack.settings

    started = stack.command("run")
    output = started.stdout + started.stderr
    assert started.returncode == 0, output
    stack.assert_no_secret(output)
    assert f"http://127.0.0.1:{s.operator_ui_port}/" in started.stdout
    assert f"http://127.0.0.1:{s.routing_api_port}/v1/" in started.stdout  # the workflow API
    assert f"http://127.0.0.1:{s.ohif_port}/" in started.stdout  # the study viewer
    assert str(stack.env_file) in started.stdout  # says where the passwords are

    # Every program runs under supervisord; Orthanc has TCP_NODELAY=1 and the site's TZ.
    procs = supervisor.processes(stack.layout)
    assert {name: procs[name].state for name in SERVICES} == dict.fromkeys(SERVICES, "RUNNING")
    orthanc_env = _orthanc_environ(procs["orthanc"].pid)
    assert orthanc_env["TCP_NODELAY"] == "1"
    assert orthanc_env["TZ"] == s.tz

    # A study sent with DCMTK's storescu is visible through REST with the .env credentials.
    datasets = make_study(1, 3, "NATIVE STACK CHECK")
    files = write_datasets(datasets, tmp_path / "study")
    store = subprocess.run(
        [STORESCU, "-aet", "E2E_SCU", "-aec", s.orthanc_aet, "127.0.0.1", str(s.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}, check=False,
    )
    assert store.returncode == 0, store.stdout + store.stderr
    study_uid = str(datasets[0].StudyInstanceUID)
    auth = (s.orthanc_username, s.orthanc_password.get_secret_value())
    with httpx.Client(base_url=s.orthanc_url, auth=auth, timeout=10) as rest:
        hits = rest.post("/tools/lookup", content=study_uid.encode()).json()
        assert [h["Type"] for h in hits] == ["Study"]
        study = rest.get(f"/studies/{hits[0]['ID']}").json()
        assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid
        assert len(rest.get(f"/studies/{hits[0]['ID']}/instances").json()) == 3
    assert httpx.get(f"{s.orthanc_url}/studies", timeout=10).status_code == 401  # never open

    # The worker saw it (its health stays ok) and the app answers on OPERATOR_UI_PORT.
    assert httpx.get(f"http://127.0.0.1:{s.routing_api_port}/health", timeout=10).json()["status"] == "ok"
    app = httpx.get(f"http://127.0.0.1:{s.operator_ui_port}/", timeout=10)
    assert app.status_code == 200 and "<html" in app.text.lower()
    assert httpx.get(f"http://127.0.0.1:{s.operator_ui_port}/_stcore/health", timeout=10).text == "ok"

    # The viewer gateway on OHIF_PORT: nothing without a login; with the first admin's, the study.
    with httpx.Client(base_url=f"http://127.0.0.1:{s.ohif_port}", timeout=10) as viewer:
        assert viewer.get("/dicom-web/studies").status_code == 401
        form = viewer.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        login = viewer.post("/login", data={"username": s.app_admin_username, "csrf": csrf.group(1),
                                            "password": s.app_admin_password.get_secret_value()})
        assert login.status_code == 303
        found = viewer.get("/dicom-web/studies", params={"StudyInstanceUID": study_uid})
        assert found.status_code == 200 and len(found.json()) == 1
        assert viewer.get("/app-config.js").status_code == 200
        assert viewer.get("/tools/find").status_code == 404

    # A second run is idempotent: same supervisord, same processes, still healthy.
    pid_before = supervisor.supervisord_pid(stack.layout)
    again = stack.command("run")
    assert again.returncode == 0, again.stdout + again.stderr
    assert supervisor.supervisord_pid(stack.layout) == pid_before
    assert {n: p.pid for n, p in supervisor.processes(stack.layout).items()} == {
        n: p.pid for n, p in procs.items()}

    status = stack.command("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "All services healthy" in status.stdout
    stack.assert_no_secret(status.stdout + status.stderr)
    for name in ("postgres", "orthanc", "dicom", "worker", "api", "app", "viewer"):
        assert any(line.startswith("ok") and f" {name} " in line for line in status.stdout.splitlines()), name

    # stop leaves nothing behind: every pid seen above is gone, nothing else of ours runs.
    pids = [p.pid for p in procs.values()] + [pid_before]
    stopped = stack.command("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not any(supervisor.pid_alive(pid) for pid in pids), timeout=30, what="stack pids gone")
    assert stack_processes(s, stack.layout, stack.env_file) == []
    assert not supervisor.is_up(stack.layout)

    after = stack.command("status")
    assert after.returncode != 0
    assert "NOT RUNNING" in after.stdout
