"""Run the real OHIF gateway (`python -m viewer`, uvicorn) as a child process in tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from core.settings import PROJECT_ROOT
from ops.stack.ohif import ensure_ohif
from testkit.harness.procs import spawn, terminate
from testkit.harness.stack import write_env
from testkit.harness.waiting import wait_until


def ohif_dist() -> Path:
    """The pinned OHIF viewer, installed once per checkout (var/ohif) as `make run` installs it."""
    return ensure_ohif(out=lambda _line: None)


class ViewerProcess:
    """The gateway on 127.0.0.1:OHIF_PORT, reading `values` from its own .env file."""

    def __init__(self, values: dict[str, str], directory: Path, dist: Path | None = None, name: str = "viewer"):
        self.values = values
        self.dist = dist or ohif_dist()
        self.env_file = write_env(values, directory / f"{name}.env")
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.values['OHIF_PORT']}"

    def start(self, timeout: float = 30) -> ViewerProcess:
        env = {**os.environ, "HUB_ENV_FILE": str(self.env_file), "PYTHONUNBUFFERED": "1"}
        self.proc = spawn([sys.executable, "-m", "viewer", "--dist", str(self.dist)], self.log, env=env,
                          cwd=PROJECT_ROOT)
        wait_until(self.answers, timeout=timeout, what=f"the viewer gateway on {self.url} ({self.log})")
        return self

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown) and wait; returns the exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout=timeout)
        self.proc = None
        return code
