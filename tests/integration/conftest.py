"""Fixtures for tests that run the worker daemon against the harness's servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core import qi
from core.db import make_engine
from testkit.harness.ports import free_port
from testkit.harness.worker_proc import WorkerProcess


@pytest.fixture
def env(qi_db, hub_values, clean_orthanc) -> dict:
    """Raw settings for workers on this test's database, with fast retries."""
    return {
        **hub_values,
        "QI_DB": qi_db.name,
        "ROUTING_API_PORT": str(free_port()),
        "RETRY_BASE": "0.5",
        "RETRY_CAP": "2",
        "RETRY_MAX_ATTEMPTS": "30",
        "POLL_INTERVAL": "0.2",
    }


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`workers(values, name)` starts a worker process; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(values: dict, name: str = "worker", extra_env: dict[str, str] | None = None) -> WorkerProcess:
        proc = WorkerProcess(values, tmp_path, name, extra_env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def db(qi_db) -> Iterator[Engine]:
    """An engine on this test's QI database, with qi_settings synced as the worker and app do."""
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        qi.sync_qi_settings(conn, qi_db.settings)
    yield engine
    engine.dispose()
