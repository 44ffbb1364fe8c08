"""One native stack run (supervisord: PostgreSQL, Orthanc, worker, app), inspected for leaks.

Reuses the native stack fixture of tests/integration/test_native_stack.py. After
provoking the logs (wrong Orthanc and PostgreSQL logins, a real request, a backup),
no generated secret appears in any log, in `status`/`logs` output, in a backup's
name, or in the command line of any process on the machine (sampled all along,
including while pg_dump runs); files that must hold secrets are mode 600; services
listen where README.md says; Orthanc answers 401 to the unauthenticated.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psycopg
import pytest

from core.envfile import GENERATED_SECRETS
from core.settings import PROJECT_ROOT
from tests.integration.test_native_stack import NativeStack, native_stack  # noqa: F401 - fixture
from tests.security.sockets import listening_addresses
from tests.security.test_surfaces import ORTHANC_ENDPOINTS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _all_cmdlines() -> dict[int, str]:
    """`ps -eo args` for every process, read from /proc (no ps parsing, no truncation)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                found[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


class CmdlineSampler:
    """Samples every process's command line in a thread until stopped."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.update(_all_cmdlines().values())
            self._stop.wait(0.002)

    def __enter__(self) -> CmdlineSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_no_secret_leaks_from_a_running_stack(native_stack: NativeStack) -> None:  # noqa: F811
    stack, s = native_stack, native_stack.settings
    secrets = {k: stack.values[k] for k in GENERATED_SECRETS}

    def leaks(text: str) -> list[str]:
        return [k for k, v in secrets.items() if v in text]

    with CmdlineSampler() as during_start:
        started = stack.command("run")
    assert started.returncode == 0, started.stdout + started.stderr
    assert leaks(started.stdout + started.stderr) == []

    # Listening sockets: BIND_ADDRESS for the app, the worker and PostgreSQL; Orthanc 1.10.1
    # listens everywhere (documented) and must therefore refuse the unauthenticated.
    for key, port in (("app", s.operator_ui_port), ("api", s.routing_api_port), ("postgres", s.postgres_port)):
        assert listening_addresses(port) == {s.bind_address}, key
    assert listening_addresses(s.worker_health_port) == {"127.0.0.1"}  # the worker's own, behind the API
    with httpx.Client(base_url=s.orthanc_url, timeout=10) as http:
        for method, path in ORTHANC_ENDPOINTS:
            assert http.request(method, path).status_code == 401, path
            assert http.request(method, path, auth=(s.orthanc_username, "wrong-" * 3)).status_code == 401, path
        assert http.get("/system", auth=(s.orthanc_username, secrets["ORTHANC_PASSWORD"])).status_code == 200
    for user in (s.postgres_user, "postgres", "grafana_ro"):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=s.postgres_port, user=user, password="not-the-password",
                            dbname=s.postgres_db, connect_timeout=5)
    # The API: /health open, /metrics and everything else only with a token; the worker's own on loopback.
    assert httpx.get(f"http://127.0.0.1:{s.routing_api_port}/health", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{s.routing_api_port}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{s.routing_api_port}/v1/studies", timeout=10).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{s.worker_health_port}/metrics", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{s.operator_ui_port}/", timeout=10).status_code == 200

    # A backup, with every command line sampled while it runs (pg_dump included).
    env = {**os.environ, "HUB_ENV_FILE": str(stack.env_file)}
    with CmdlineSampler() as during_backup:
        backup = subprocess.run([sys.executable, "-m", "ops.tooling.backup", "--mode", "native", "create"],
                                cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert leaks(backup.stdout + backup.stderr) == []
    assert [c for c in during_backup.seen if "pg_dump" in c], "the sampler never saw pg_dump run"
    archives = list((s.state_dir / "backups").glob("hub-backup-*.tar"))
    assert len(archives) == 1 and leaks(archives[0].name) == []
    assert stat.S_IMODE(archives[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(archives[0].parent.stat().st_mode) & 0o077 == 0, "backups directory readable by others"

    status = stack.command("status")
    logs = stack.command("logs", "-n", "500")
    assert status.returncode == 0 and logs.returncode == 0, status.stdout + logs.stderr
    assert leaks(status.stdout + status.stderr + logs.stdout + logs.stderr) == []
    assert "password authentication failed" in logs.stdout  # the provocations above were logged

    # Command lines: every process on the machine, at start, during the backup and now.
    cmdlines = during_start.seen | during_backup.seen | set(_all_cmdlines().values())
    for program in (str(stack.layout.orthanc_config), "pg_dump", "streamlit", "worker", "supervisord"):
        assert [c for c in cmdlines if program in c], f"the sampler never saw {program}"
    assert {k: [c for c in cmdlines if v in c] for k, v in secrets.items()} == {k: [] for k in secrets}

    # Files: no log holds a secret; every file holding one is private to the stack's user.
    state_files = _files(s.state_dir)
    logs_with_secrets = {str(p): leaks(p.read_text(errors="replace")) for p in state_files
                         if p.suffix == ".log" or "logs" in p.parts}
    assert {p: k for p, k in logs_with_secrets.items() if k} == {}
    assert len(logs_with_secrets) >= 5  # supervisord, postgres, orthanc, worker, app
    exposed = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in state_files
               if stat.S_IMODE(p.stat().st_mode) & 0o077 and leaks(p.read_bytes().decode(errors="replace"))}
    assert exposed == {}
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600

    stopped = stack.command("stop")
    assert stopped.returncode == 0 and leaks(stopped.stdout + stopped.stderr) == []
