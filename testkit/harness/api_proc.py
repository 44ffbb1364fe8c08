"""Run the real workflow API (`python -m api`, uvicorn) as a child process in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from core.settings import PROJECT_ROOT
from testkit.harness.procs import spawn, terminate
from testkit.harness.stack import write_env
from testkit.harness.waiting import wait_until


class ApiProcess:
    """The API on 127.0.0.1:ROUTING_API_PORT, reading `values` from its own .env file.

    It proxies /health and /metrics to WORKER_HEALTH_PORT: run a worker with
    WorkerProcess(values, ..., behind_api=True) on the same values for a real one.
    """

    def __init__(self, values: dict[str, str], directory: Path, name: str = "api"):
        self.values = values
        self.env_file = write_env(values, directory / f"{name}.env")
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.values['ROUTING_API_PORT']}"

    def start(self, timeout: float = 30) -> ApiProcess:
        env = {**os.environ, "HUB_ENV_FILE": str(self.env_file), "PYTHONUNBUFFERED": "1"}
        self.proc = spawn([sys.executable, "-m", "api"], self.log, env=env, cwd=PROJECT_ROOT)
        wait_until(self.answers, timeout=timeout, what=f"the API on {self.url} ({self.log})")
        return self

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the API exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown) and wait; returns the exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout=timeout)
        self.proc = None
        return code
