"""How often the tailer reads /changes, and when it wakes the dispatcher (issue 19 goal 1).

Orthanc logs a change per instance, so an ingest burst keeps adding a few changes to every
page. A worker that is caught up must still poll only once per POLL_INTERVAL, and a worker
with a backlog must return to its main loop (health, checks) between pages. These tests
drive a real Tailer, and a real Worker's main loop, against the real Orthanc and database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from core.orthanc_client import OrthancClient
from core.settings import Settings
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import send
from testkit.synthetic import make_study
from worker import tailer as tailer_module
from worker.main import Worker
from worker.rules_watch import RulesHolder
from worker.tailer import Tailer, read_cursor

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(qi_db) -> Iterator[Engine]:
    eng = create_engine(qi_db.url)
    yield eng
    eng.dispose()


@pytest.fixture
def client(clean_orthanc, hub_settings: Settings) -> Iterator[OrthancClient]:
    made = OrthancClient.from_settings(hub_settings)
    yield made
    made.close()


def make_tailer(settings: Settings, engine: Engine, client: OrthancClient, tmp_path) -> Tailer:
    rules = tmp_path / "routing.yml"
    rules.write_text("rules: []\n")
    return Tailer(settings, engine, client, RulesHolder(rules, engine))


def changes(client: OrthancClient) -> list[dict[str, Any]]:
    return client.changes(0, 1000)["Changes"]


def test_a_step_returns_after_its_time_with_the_rest_of_the_page_left_for_the_next(
        qi_db, engine, client, hub_settings, tmp_path, monkeypatch):
    """The main loop reports health and runs its checks between steps: a backlog must not hold it for a page."""
    send(make_study(1, 2, "CR BACKLOG"), hub_settings)
    wait_until(lambda: any(c["ChangeType"] == "StableStudy" for c in changes(client)), timeout=30,
               what="study stable in Orthanc")
    log = changes(client)
    new_series = next(c["Seq"] for c in log if c["ChangeType"] == "NewSeries")
    monkeypatch.setattr(tailer_module, "STEP_MAX_S", 0.0)
    monkeypatch.setattr(tailer_module, "GROUP_MAX", 1)  # a group ends after one handled change
    tailer = make_tailer(qi_db.settings, engine, client, tmp_path)
    assert tailer.step() == len([c for c in log if c["Seq"] <= new_series])
    assert tailer.behind, "the rest of the page is waiting"
    with engine.connect() as conn:
        assert read_cursor(conn) == new_series
    while tailer.step():
        pass
    with engine.connect() as conn:
        assert read_cursor(conn) == log[-1]["Seq"]
        assert conn.execute(text("SELECT count(*) FROM studies WHERE stable_at IS NOT NULL")).scalar_one() == 1


def test_a_caught_up_step_lets_the_loop_wait_and_only_a_stable_study_wakes_the_dispatcher(
        qi_db, engine, client, hub_settings, tmp_path):
    """A page Orthanc says is complete ends the burst of steps; only StableStudy routes, so only it may queue a job."""
    send(make_study(1, 3, "CR CAUGHT UP"), hub_settings)
    wait_until(lambda: any(c["ChangeType"] == "StableStudy" for c in changes(client)), timeout=30,
               what="study stable in Orthanc")
    log = changes(client)
    before_stable_study = next(i for i, c in enumerate(log) if c["ChangeType"] == "StableStudy")
    wakes: list[int] = []
    tailer = make_tailer(qi_db.settings.model_copy(update={"changes_batch": before_stable_study}), engine, client,
                         tmp_path)
    tailer.on_commit = lambda: wakes.append(tailer.cursor)
    tailer.step()
    assert tailer.behind, "a full page: more changes are waiting"
    assert wakes == [], "NewSeries and StableSeries were handled, but nothing was routed"
    tailer.settings = qi_db.settings
    tailer.step()
    assert not tailer.behind, "Orthanc's page was Done"
    assert len(wakes) == 1, "the StableStudy was handled: the dispatcher is woken once"


def test_while_instances_stream_in_a_caught_up_worker_polls_changes_once_per_poll_interval(
        qi_db, hub_settings, tmp_path, clean_orthanc):
    """Each new instance is a change: stepping again at once for it would poll /changes,
    write the cursor and wake the dispatcher many times a second through a whole burst."""
    rules = tmp_path / "routing.yml"
    rules.write_text("rules: []\n")
    settings = qi_db.settings.model_copy(update={
        "poll_interval": 1.0, "routing_rules": rules, "worker_health_port": free_port()})
    worker = Worker(settings)
    steps: list[float] = []
    step = worker.tailer.step

    def counted() -> int:
        steps.append(time.monotonic())
        return step()

    worker.tailer.step = counted  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.run, name="worker-under-test")
    thread.start()
    try:
        wait_until(lambda: worker.owns_cursor, timeout=30, what="the worker tailing")
        began = time.monotonic()
        for n in range(3):
            send(make_study(1, 40, f"CT STREAM {n}"), hub_settings)
        elapsed = time.monotonic() - began
        during = [t for t in steps if began <= t <= began + elapsed]
    finally:
        worker.stop.set()
        thread.join(60)
    assert not thread.is_alive()
    # One step per POLL_INTERVAL, plus the one under way when the burst began.
    assert len(during) <= elapsed / settings.poll_interval + 2, (len(during), round(elapsed, 1))
