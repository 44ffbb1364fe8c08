"""Issue 15, part 3: a broken routing.yml is loud once, never a flood.

Probe: saving a broken file while the worker ran kept the last good rules (right), but
wrote 'routing rules refused' 9,319 times in 81 s, because reading the file fired the
watcher again; meanwhile /health said ok and `make status` said all was healthy.

Here a real worker runs on a good file, the file is saved broken, and after 30 s: one
log line, one audit entry and one status entry; the worker spent no CPU spinning; and
/health, `make status`'s probe, `./orthanc status` and the app's Overview all say
"degraded: routing.yml refused at line N, running on rules of HH:MM".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Engine, text
from streamlit.testing.v1 import AppTest

from core.rules import RulesError, parse_rules
from core.rules_status import error_line
from core.settings import PROJECT_ROOT, Settings, load_settings
from ops.stack.probes import probe_worker
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, WorkerProcess
from tests.integration.app.conftest import AppEnv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BROKEN = ALL_TO_PACS.replace("deliver_to: [PACS]", "deliver_to: 'not a name!'")
ALSO_BROKEN = ALL_TO_PACS.replace("payload: matched", "payload: everything")
REFUSED = "routing rules refused"
SETTLE_S = 10  # the old code wrote ~120 refusal lines a second: a flood shows within seconds


def _line_of(content: str) -> int:
    with pytest.raises(RulesError) as refused:
        parse_rules(content, "routing.yml")
    line = error_line(str(refused.value))
    assert line is not None
    return line


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _refused_lines(worker: WorkerProcess) -> int:
    return sum(REFUSED in line for line in worker.log.read_text(errors="replace").splitlines())


def _audits(db: Engine) -> list[dict]:
    with db.connect() as conn:
        return [r.after for r in conn.execute(text(
            "SELECT after FROM audit_log WHERE action = 'rules.refused' ORDER BY id"))]


def _health(worker: WorkerProcess) -> tuple[int, dict]:
    response = httpx.get(worker.health_url, timeout=5)
    return response.status_code, response.json()


def _expected(db: Engine, settings: Settings, content: str) -> str:
    with db.connect() as conn:
        loaded_at = conn.execute(text("SELECT loaded_at FROM config_status WHERE name = 'routing_rules'")).scalar_one()
    return f"routing.yml refused at line {_line_of(content)}, running on rules of " \
           f"{loaded_at.astimezone(settings.zone).strftime('%H:%M')}"


def _compose_healthcheck(port: str) -> int:
    """Run the worker's healthcheck command from stack/docker-compose.yml against this worker."""
    compose = yaml.safe_load((PROJECT_ROOT / "stack" / "docker-compose.yml").read_text())
    command = compose["services"]["worker"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    code = command[3].replace("${WORKER_HEALTH_PORT}", port)
    return subprocess.run([sys.executable, "-c", code], timeout=30, check=False).returncode


def _orthanc_status(env_file: Path) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "COLUMNS": "250"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops.cli", "status", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    return run("--json"), run()


def test_a_broken_rules_file_is_loud_once_and_shown_as_degraded_everywhere(
    env: dict, workers: Callable[..., WorkerProcess], db: Engine, app_env: AppEnv,
    open_page: Callable[..., AppTest], tmp_path: Path,
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    path = rules_dir / "routing.yml"
    path.write_text(ALL_TO_PACS)
    values = {**env, "ROUTING_RULES": str(path)}
    worker = workers(values)
    settings = load_settings(worker.env_file)
    assert worker.proc is not None
    pid = worker.proc.pid
    assert _health(worker)[1]["status"] == "ok"

    cpu_before = _cpu_s(pid)
    path.write_text(BROKEN)
    time.sleep(SETTLE_S)
    cpu_spent = _cpu_s(pid) - cpu_before

    assert 1 <= _refused_lines(worker) <= 3, f"{_refused_lines(worker)} log lines: a flood"
    assert len(_audits(db)) == 1
    assert _audits(db)[0]["line"] == _line_of(BROKEN)
    # Polling /changes every 0.2 s costs a fraction of this; re-reading the file in a loop costs it all.
    assert cpu_spent < SETTLE_S / 5, f"the worker spent {cpu_spent:.1f} s of CPU in {SETTLE_S} s"

    expected = _expected(db, settings, BROKEN)
    code, body = _health(worker)
    assert (code, body["status"], body["problems"]) == (503, "degraded", [expected])
    assert body["rules_error"] and body["orthanc"] and body["database"]

    probe = probe_worker(settings)  # what `make status` (and `make run`'s summary) prints for the worker
    assert not probe.ok and probe.degraded and f"degraded: {expected}" in probe.detail
    # The compose healthcheck keeps the container up (as `make run` does natively): degraded, not dead.
    assert _compose_healthcheck(worker.values["WORKER_HEALTH_PORT"]) == 0

    as_json, as_table = _orthanc_status(worker.env_file)
    assert as_json.returncode == 4, as_json.stdout + as_json.stderr
    assert json.loads(as_json.stdout)["worker"]["problems"] == [expected]
    assert f"degraded: {expected}" in as_table.stdout, as_table.stdout

    overview = open_page("overview", as_="viewer")
    assert f"degraded: {expected}" in [str(e.value).split(" (Rules page)")[0] for e in overview.error]

    # Saving the same broken content again is silent; a different broken content is reported once more.
    path.write_text(BROKEN)
    time.sleep(2)
    assert _refused_lines(worker) == 1 and len(_audits(db)) == 1
    path.write_text(ALSO_BROKEN)
    wait_until(lambda: len(_audits(db)) == 2, timeout=20, what="the second refusal")
    time.sleep(2)
    assert _refused_lines(worker) == 2 and len(_audits(db)) == 2

    # A worker started while the file is broken runs on the last good rules, says so, and adds no audit entry.
    second = WorkerProcess({**values, "ROUTING_API_PORT": str(free_port())}, tmp_path, "second")
    second.start_nowait()
    try:
        wait_until(lambda: _answers(second), timeout=30, what="the second worker's /health")
        expected_also = _expected(db, settings, ALSO_BROKEN)
        # /health answers before the worker's main loop has read routing.yml the first time.
        wait_until(lambda: _health(second)[1]["problems"] == [expected_also], timeout=30,
                   what="the second worker's rules problem")
        assert _refused_lines(second) == 1 and len(_audits(db)) == 2
    finally:
        second.stop()

    # Fixed: healthy again, everywhere.
    path.write_text(ALL_TO_PACS)
    wait_until(lambda: _health(worker)[0] == 200, timeout=20, what="health after the fix")
    assert _health(worker)[1]["problems"] == []
    assert probe_worker(settings).ok
    assert not [e for e in open_page("overview", as_="viewer").error if "routing.yml" in str(e.value)]


def _answers(worker: WorkerProcess) -> bool:
    try:
        _health(worker)
        return True
    except (httpx.HTTPError, ValueError):
        return False
