"""Run the real worker daemon (`python -m worker`) as a child process in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from hub.settings import PROJECT_ROOT
from tests.harness.procs import spawn
from tests.harness.stack import write_env
from tests.harness.waiting import wait_until


class WorkerProcess:
    """One worker process reading `values` (raw settings) from its own .env file."""

    def __init__(self, values: dict[str, str], directory: Path, name: str = "worker"):
        self.values = values
        self.env_file = write_env(values, directory / f"{name}.env")
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.values['ROUTING_API_PORT']}/health"

    def start(self) -> WorkerProcess:
        env = {**os.environ, "HUB_ENV_FILE": str(self.env_file), "PYTHONUNBUFFERED": "1"}
        self.proc = spawn([sys.executable, "-m", "worker"], self.log, env=env, cwd=PROJECT_ROOT)
        wait_until(self._healthy, timeout=30, what=f"worker health ({self.log})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(self.health_url, timeout=5).json()

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
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.proc = None
        return code
