"""Crashes on demand: SIGKILL the worker or Orthanc, fast-restart PostgreSQL.

`FaultPlan` draws when each fault strikes from a seeded `random.Random`; a
`FaultInjector` thread applies them in turn while a run is under way and records
what it did, so a failing run can be replayed from its seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from testkit.harness.stack import OrthancServer, PostgresServer
from testkit.harness.waiting import wait_until


class CpuHog:
    """Busy-loop processes on every core while a test runs, as on a loaded hub.

    The windows between the send protocol's steps widen under load; the exactly-once
    tests run beside a hog so that a kill lands in them as it would on a bad day.
    """

    def __init__(self, processes: int | None = None):
        self.processes = processes or os.cpu_count() or 2
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CpuHog:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.processes)]
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


def sigkill_orthanc(server: OrthancServer) -> None:
    """Kill Orthanc with SIGKILL (no shutdown, jobs not saved) and start it again."""
    if server.proc is not None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server.proc = None
    server.stop()
    server.start()


def orthanc_answers(server: OrthancServer) -> bool:
    try:
        return server.rest is not None and server.rest.http.get("/system", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def restart_postgres(pg: PostgresServer, orthanc: OrthancServer) -> bool:
    """Fast shutdown (SIGINT) and restart of PostgreSQL; wait until Orthanc answers again.

    Returns True when Orthanc itself died with its database and had to be started again
    (as supervisord would).
    """
    pg.stop()
    pg.start()
    if orthanc.proc is not None and orthanc.proc.poll() is not None:
        orthanc.proc = None
        orthanc.stop()
        orthanc.start()
        return True
    wait_until(lambda: orthanc_answers(orthanc), timeout=60, what="Orthanc answering after the database restart")
    return False


@dataclass
class FaultInjector:
    """Applies `faults` (name, action) in order, each after a random pause drawn from `gap_s`.

    `run()` blocks, and must run on the thread that owns the servers: the harness starts
    children with a parent-death signal, which Linux sends when the *thread* that
    spawned them exits, so a server restarted from a short-lived thread would be
    stopped again as soon as that thread ended. Run the load on a thread instead.
    """

    faults: list[tuple[str, Callable[[], object]]]
    rng: random.Random
    gap_s: tuple[float, float] = (2.0, 8.0)
    done: list[tuple[float, str, object]] = field(default_factory=list)
    struck_at: list[datetime] = field(default_factory=list)  # wall clock (UTC) of each fault

    def run(self) -> None:
        t0 = time.monotonic()
        for name, action in self.faults:
            time.sleep(self.rng.uniform(*self.gap_s))
            at = round(time.monotonic() - t0, 1)
            self.struck_at.append(datetime.now(UTC))
            self.done.append((at, name, action()))
