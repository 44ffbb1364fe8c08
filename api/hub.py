"""What every request needs: the settings, one engine, the worker's health server, Orthanc.

Built once per process (api/app.py). Reads run in READ ONLY transactions with a
statement timeout, as the app's pages do (app/components/db.py), so no filter can
change anything or hold the database; writes run in one transaction per action.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Connection, Engine, text

from core.db import engine_for
from core.orthanc_client import OrthancClient
from core.queries import limit_statement_time
from core.settings import Settings

READ_TIMEOUT_MS = 8000
QI_READ_TIMEOUT_MS = 20_000
WRITE_TIMEOUT_MS = 15_000
WORKER_TIMEOUT_S = 4.0
ORTHANC_TIMEOUT_S = 5.0


def local_address(host: str) -> str:
    """Where to reach a server bound to `host` from this machine (0.0.0.0 is not an address to call)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


@dataclass
class Hub:
    settings: Settings
    engine: Engine
    worker: httpx.Client = field(init=False)
    orthanc: OrthancClient = field(init=False)

    def __post_init__(self) -> None:
        host = local_address(self.settings.worker_health_host)
        host = f"[{host}]" if ":" in host else host
        self.worker = httpx.Client(base_url=f"http://{host}:{self.settings.worker_health_port}",
                                   timeout=WORKER_TIMEOUT_S)
        self.orthanc = OrthancClient.from_settings(self.settings, timeout=ORTHANC_TIMEOUT_S)

    @classmethod
    def from_settings(cls, settings: Settings) -> Hub:
        return cls(settings, engine_for(settings, pool_size=8, max_overflow=8))

    @contextmanager
    def reading(self, timeout_ms: int = READ_TIMEOUT_MS) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            limit_statement_time(conn, timeout_ms)
            yield conn

    @contextmanager
    def writing(self, timeout_ms: int = WRITE_TIMEOUT_MS) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            limit_statement_time(conn, timeout_ms)
            yield conn

    def close(self) -> None:
        self.worker.close()
        self.orthanc.close()
        self.engine.dispose()
