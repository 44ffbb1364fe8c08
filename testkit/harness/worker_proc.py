"""Run the real worker daemon (`python -m worker`) as a child process in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from sqlalchemy import Engine, RowMapping, text

from core.settings import PROJECT_ROOT
from core.states import JobState
from testkit.dicom_peers import send_datasets
from testkit.harness.ports import free_port
from testkit.harness.procs import spawn, terminate
from testkit.harness.stack import write_env
from testkit.harness.waiting import wait_until


class WorkerProcess:
    """One worker process reading `values` (raw settings) from its own .env file.

    The worker serves /health and /metrics on WORKER_HEALTH_PORT; on a stack, the API
    (api/, ROUTING_API_PORT) serves them to others. A worker run alone, as most tests run
    it, has no API in front: it then serves them on the port the test chose as
    ROUTING_API_PORT (and gets an unused one as its ROUTING_API_PORT), so a test that
    starts a second worker with a fresh ROUTING_API_PORT gets a second health port too.
    `behind_api=True` keeps the values as given (a test that runs the API as well).
    """

    def __init__(self, values: dict[str, str], directory: Path, name: str = "worker",
                 extra_env: dict[str, str] | None = None, *, behind_api: bool = False, code: Path = PROJECT_ROOT):
        if not behind_api:
            values = {**values, "WORKER_HEALTH_PORT": values["ROUTING_API_PORT"], "ROUTING_API_PORT": str(free_port())}
        self.values = values
        self.extra_env = extra_env or {}  # process environment, e.g. HUB_FAILPOINT (settings come from .env)
        self.env_file = write_env(values, directory / f"{name}.env")
        self.log = directory / f"{name}.log"
        self.code = code  # the tree whose worker runs: another revision's, for a before/after benchmark
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.values['WORKER_HEALTH_PORT']}/health"

    def start(self) -> WorkerProcess:
        self.start_nowait()
        wait_until(self.healthy, timeout=30, what=f"worker health ({self.log})")
        return self

    def start_nowait(self) -> WorkerProcess:
        """Spawn the process and return at once (as supervisord restarts a worker)."""
        env = {**os.environ, "HUB_ENV_FILE": str(self.env_file), "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = spawn([sys.executable, "-m", "worker"], self.log, env=env, cwd=self.code)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(self.health_url, timeout=5).json()

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end on its own (a failpoint); returns its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout=timeout)
        self.proc = None
        return code


# --- helpers shared by the worker tests -------------------------------------------------

ALL_TO_PACS = """
version: 1
rules:
  - name: everything-to-pacs
    when: {kind: original}
    then: {deliver_to: [PACS], payload: matched}
"""


def rules_file(directory: Path, content: str) -> str:
    path = directory / "routing.yml"
    path.write_text(content)
    return str(path)


def send(datasets, settings, calling_aet: str = "MODALITY1") -> None:
    """C-STORE datasets to the test Orthanc and insist every one was accepted.

    The timeout is generous: the exactly-once tests send beside a CPU hog on every core,
    where Orthanc's answer can take longer than pynetdicom's usual 30 s."""
    statuses = send_datasets(datasets, "127.0.0.1", settings.dicom_port, calling_aet, settings.orthanc_aet,
                             timeout=120)
    assert statuses and all(s == 0 for s in statuses), statuses


def jobs(engine: Engine) -> Sequence[RowMapping]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM routing_jobs ORDER BY id")).mappings().all()


def event_types(engine: Engine, study_uid: str) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [
            (r.type, r.destination)
            for r in conn.execute(
                text("SELECT e.type, e.destination FROM events e JOIN studies s ON s.id = e.study_id "
                     "WHERE s.study_uid = :uid ORDER BY e.id"),  # recorded (causal) order, as the app lists them
                {"uid": study_uid},
            )
        ]


def study_row(engine: Engine, study_uid: str):  # noqa: ANN201 - a RowMapping or None
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM studies WHERE study_uid = :u"), {"u": study_uid}).mappings().first()


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


def all_jobs_final(engine: Engine, n: int) -> bool:
    rows = jobs(engine)
    return len(rows) >= n and all(r["state"] in FINAL_STATES for r in rows)
