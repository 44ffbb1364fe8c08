"""The throwaway stack every benchmark runs on, on loopback, torn down when done.

`bench_stack()` starts a real PostgreSQL (migrated, roles and databases as in
production) in a temporary directory and yields a `BenchStack`; what a benchmark
starts through it (Orthancs, dcmtk `storescp` peers, workers) is stopped in reverse
order when the block ends, even when the benchmark fails. Settings are the test
harness's (`testkit/harness/stack.py`): free ports, fresh secrets, STABLE_AGE 2 s and
POLL_INTERVAL 0.5 s unless overridden.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from core.db import migrate
from core.envfile import generate_secret
from core.settings import PROJECT_ROOT, Settings, settings_from_values
from ops import pgcluster
from testkit.harness.stack import OrthancRest, OrthancServer, PostgresServer, make_values, remove_tree
from testkit.harness.worker_proc import WorkerProcess

ALL_TO_PEER = """
version: 1
rules:
  - name: all-to-peer
    when: {kind: original}
    then: {deliver_to: [PEER], payload: study}
"""


@dataclass
class BenchStack:
    base: Path
    values: dict[str, str]
    settings: Settings
    engine: Engine
    _cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def orthanc(self, name: str = "orthanc", overrides: dict[str, Any] | None = None) -> OrthancServer:
        """Start an Orthanc on this stack's index (`overrides` replace configuration keys)."""
        server = OrthancServer(self.settings, self.base / name, overrides=overrides)
        self._cleanup.callback(server.stop)
        server.start()
        return server

    def storescp(self, port: int, *options: str) -> subprocess.Popen[bytes]:
        """Start dcmtk's storescp as AET PEER on `port` (TCP_NODELAY=1, as Orthanc runs)."""
        peer = subprocess.Popen(["storescp", "-aet", "PEER", *options, str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"})
        self._cleanup.callback(_terminate, peer)
        return peer

    def worker(self, rules: str = ALL_TO_PEER, name: str = "worker", code: Path = PROJECT_ROOT) -> WorkerProcess:
        """Start `python -m worker` of the tree `code` with `rules` and wait until its /health answers."""
        path = self.base / f"{name}-routing.yml"
        path.write_text(rules)
        worker = WorkerProcess({**self.values, "ROUTING_RULES": str(path)}, self.base, name, code=code)
        self._cleanup.callback(worker.stop)
        return worker.start()

    def cursor_lag(self, rest: OrthancRest) -> int:
        """Orthanc's last change minus the worker's committed /changes cursor."""
        last = rest.get("/changes", last="")["Last"]
        with self.engine.connect() as conn:
            cursor = conn.execute(text("SELECT max(value) FROM worker_state")).scalar_one() or 0
        return max(0, last - cursor)

    def count_stable_studies(self) -> int:
        """Studies the worker has seen stable (routed or not)."""
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM studies WHERE stable_at IS NOT NULL")).scalar_one()

    def count_jobs(self, state: str | None = None) -> int:
        """Routing jobs in `state` (all of them when None)."""
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM routing_jobs WHERE CAST(:s AS text) IS NULL OR state = :s"),
                                {"s": state}).scalar_one()


def print_footer(module: str) -> None:
    """The lines that make a printed result reproducible: its command and when it ran."""
    print(f"command: .venv/bin/python -m {module} {' '.join(sys.argv[1:])}".rstrip())
    print(f"measured {datetime.now(UTC).isoformat(timespec='seconds')}")


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


@contextlib.contextmanager
def bench_stack(prefix: str, **overrides: str) -> Iterator[BenchStack]:
    """A migrated PostgreSQL in a fresh temporary directory; everything removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=f"hub-{prefix}-"))
    os.chmod(base, 0o755)  # the postgres user reads its data directory below it
    values = make_values(base, base / "pgdata", **{"STABLE_AGE": "2", "POLL_INTERVAL": "0.5", **overrides})
    settings = settings_from_values(values)
    pg = PostgresServer(datadir=settings.postgres_storage, host="127.0.0.1", port=settings.postgres_port,
                        superuser_password=generate_secret(), logfile=base / "pg.log")
    stack: BenchStack | None = None
    try:
        pg.start()
        pgcluster.ensure_roles_and_databases(settings, superuser_password=pg.superuser_password)
        migrate(settings.pg_url())
        stack = BenchStack(base, values, settings, create_engine(settings.pg_url()))
        with stack._cleanup:
            yield stack
    finally:
        if stack is not None:
            stack.engine.dispose()
        pg.stop()
        remove_tree(base)
