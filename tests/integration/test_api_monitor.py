"""/health and /metrics on ROUTING_API_PORT: the API proxies a real worker's own server.

A real worker (on this test's QI database and the emptied Orthanc) serves WORKER_HEALTH_PORT
on loopback; a real API process serves ROUTING_API_PORT. The worker is then killed: the
API says so, with the same document shape, and `make status`'s probes tell the two apart.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Engine

from core import auth
from core.settings import PROJECT_ROOT, settings_from_values
from core.states import AuditSource, Role
from ops.stack.probes import probe_api, probe_worker
from testkit.harness.api_proc import ApiProcess
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer
from testkit.harness.worker_proc import WorkerProcess
from tests.security.sockets import listening_addresses

pytestmark = pytest.mark.integration


def test_health_and_metrics_are_the_workers_behind_the_api(
    env: dict[str, str], db: Engine, clean_orthanc: OrthancServer, tmp_path: Path,
) -> None:
    values = {**env, "WORKER_HEALTH_PORT": str(free_port())}
    settings = settings_from_values(values)
    worker = WorkerProcess(values, tmp_path, "worker", behind_api=True).start()
    api = ApiProcess(values, tmp_path).start()
    try:
        with db.begin() as conn:
            _, token = auth.create_token(conn, "prometheus", Role.VIEWER, actor="test", source=AuditSource.SETUP)
        own = worker.health()
        assert worker.health_url == f"http://127.0.0.1:{values['WORKER_HEALTH_PORT']}/health"
        proxied = httpx.get(f"{api.url}/health", timeout=10)  # no token: /health stays open
        assert proxied.status_code == 200 and proxied.headers["content-type"] == "application/json"
        body = proxied.json()
        assert (body["status"], body["worker_id"], body["owns_cursor"]) == ("ok", own["worker_id"], True)

        assert httpx.get(f"{api.url}/metrics", timeout=10).status_code == 401
        metrics = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        for name in ("hub_changes_processed", "hub_cursor_lag", "hub_jobs", "hub_send_failures"):
            assert name in metrics.text
        direct = httpx.get(worker.health_url.replace("/health", "/metrics"), timeout=10).text
        assert _families(metrics.text) == _families(direct)  # the worker's own exposition, passed on whole

        assert probe_worker(settings).ok and probe_api(settings).ok
        assert "ok" in probe_api(settings).detail
        assert _compose_healthcheck("worker", values) == 0 and _compose_healthcheck("api", values) == 0

        worker.kill()
        down = httpx.get(f"{api.url}/health", timeout=10)
        assert down.status_code == 503
        assert down.json()["status"] == "down" and "does not answer" in down.json()["problems"][0]
        gone = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert gone.status_code == 503
        assert not probe_worker(settings).ok
        assert probe_api(settings).ok, "the API itself is up: it answers, and says the worker is down"
        assert _compose_healthcheck("worker", values) == 1 and _compose_healthcheck("api", values) == 0
        with db.connect() as conn:
            used = auth.get_token(conn, "prometheus")
        assert used is not None and used.last_used_at is not None and used.last_used_at <= datetime.now(UTC)
    finally:
        api.stop()
        worker.stop()


def _compose_healthcheck(service: str, values: dict[str, str]) -> int:
    """Run a service's healthcheck command from stack/docker-compose.yml against this test's processes."""
    compose = yaml.safe_load((PROJECT_ROOT / "stack" / "docker-compose.yml").read_text())
    command = compose["services"][service]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    code = command[3]
    for key in ("ROUTING_API_PORT", "WORKER_HEALTH_PORT"):
        code = code.replace("${" + key + "}", values[key])
    assert "${" not in code
    return subprocess.run([sys.executable, "-c", code], timeout=30, check=False).returncode


def _families(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def test_the_worker_listens_on_loopback_only_and_the_api_on_bind_address(
    env: dict[str, str], qi_db: object, clean_orthanc: OrthancServer, tmp_path: Path,
) -> None:
    values = {**env, "WORKER_HEALTH_PORT": str(free_port())}
    worker = WorkerProcess(values, tmp_path, "worker", behind_api=True).start()
    api = ApiProcess(values, tmp_path).start()
    try:
        assert listening_addresses(int(values["WORKER_HEALTH_PORT"])) == {"127.0.0.1"}
        assert listening_addresses(int(values["ROUTING_API_PORT"])) == {values["BIND_ADDRESS"]}
        # uvicorn's graceful shutdown, then it exits by the signal it was sent (not a SIGKILL after the wait).
        assert api.stop() in (0, -signal.SIGTERM)
        assert _compose_healthcheck("api", values) == 1
    finally:
        api.stop()
        worker.stop()
