"""During ingest the tailer reads nothing from Orthanc: a NewSeries is noted as an arrival.

Issue 19 goal 1. Orthanc 1.10.1 serialises its index, so REST reads during an ingest
burst hold the burst up. The tailer now keeps what a NewSeries change says (the series'
Orthanc id and its date) in `series_arrivals`, written with the cursor, and reads the
series once, at StableSeries. These tests drive a real Tailer against the real Orthanc
and database, one /changes page at a time, through a client that counts its reads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from core import recorder
from core.orthanc_client import OrthancClient, parse_orthanc_time
from core.settings import Settings
from core.states import Purpose
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import send
from testkit.synthetic import make_study
from worker import tailer as tailer_module
from worker.main import Worker
from worker.rules_watch import RulesHolder
from worker.tailer import Tailer, check_ai_overdue, read_cursor

pytestmark = pytest.mark.integration


class CountingClient(OrthancClient):
    """The real client, counting the reads of resources (not of /changes)."""

    reads: Counter[str]

    def series(self, orthanc_id: str) -> dict[str, Any]:
        self.reads["series"] += 1
        return super().series(orthanc_id)

    def study(self, orthanc_id: str) -> dict[str, Any]:
        self.reads["study"] += 1
        return super().study(orthanc_id)

    def instance_metadata(self, orthanc_id: str) -> dict[str, str]:
        self.reads["instance_metadata"] += 1
        return super().instance_metadata(orthanc_id)


@pytest.fixture
def engine(qi_db) -> Iterator[Engine]:
    eng = create_engine(qi_db.url)
    yield eng
    eng.dispose()


@pytest.fixture
def client(clean_orthanc, hub_settings: Settings) -> Iterator[CountingClient]:
    made = CountingClient.from_settings(hub_settings)
    assert isinstance(made, CountingClient)
    made.reads = Counter()
    yield made
    made.close()


def make_tailer(settings: Settings, engine: Engine, client: OrthancClient, tmp_path) -> Tailer:
    rules = tmp_path / "routing.yml"
    rules.write_text("rules: []\n")
    return Tailer(settings, engine, client, RulesHolder(rules, engine))


def changes(client: OrthancClient) -> list[dict[str, Any]]:
    return client.changes(0, 1000)["Changes"]


def arrivals(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT orthanc_id, arrived_at FROM series_arrivals")).all())


def recorded(engine: Engine, orthanc_id: str):  # noqa: ANN201 - a Row or None
    with engine.connect() as conn:
        return conn.execute(text("SELECT instance_count, first_received_at FROM series WHERE orthanc_id = :o"),
                            {"o": orthanc_id}).first()


def test_an_arriving_series_is_noted_without_a_read_and_recorded_once_stable(
        qi_db, engine, client, hub_settings, tmp_path):
    study = make_study(1, 3, "CT ARRIVING")
    send(study, hub_settings)
    log = changes(client)
    new_series = next(c for c in log if c["ChangeType"] == "NewSeries")
    series_id = new_series["ID"]

    # The page ends at the NewSeries, whatever Orthanc has logged since (its StableAge may pass).
    upto = [c for c in log if c["Seq"] <= new_series["Seq"]]
    tailer = make_tailer(qi_db.settings.model_copy(update={"changes_batch": len(upto)}), engine, client, tmp_path)
    tailer.step()
    with engine.connect() as conn:
        assert read_cursor(conn) == new_series["Seq"]
    assert arrivals(engine) == {series_id: parse_orthanc_time(new_series["Date"])}
    assert recorded(engine, series_id) is None, "recorded before it was stable"
    assert sum(client.reads.values()) == 0, f"read Orthanc during ingest: {dict(client.reads)}"

    wait_until(lambda: any(c["ChangeType"] == "StableStudy" for c in changes(client)), timeout=30,
               what="study stable in Orthanc")
    tailer.settings = qi_db.settings
    while tailer.step():
        pass
    row = recorded(engine, series_id)
    assert row is not None and row.instance_count == 3
    first = client.instance_metadata(client.series(series_id)["Instances"][0])
    assert row.first_received_at == parse_orthanc_time(first["ReceptionDate"])
    assert arrivals(engine) == {}
    # Before: series, study and metadata at NewSeries, the series again at StableSeries.
    assert client.reads["series"] == 1 + 1 and client.reads["instance_metadata"] == 1 + 1  # (+1: this test's own)


def test_an_arrival_never_announced_stable_is_recorded_by_the_sweep(
        qi_db, engine, client, hub_settings, tmp_path, monkeypatch):
    """Orthanc's stability timers die with it: the sweep reads arrivals whose StableSeries never came."""
    monkeypatch.setattr(tailer_module, "STABILITY_GRACE_S", 0)
    study = make_study(1, 2, "CR NEVER STABLE")
    send(study, hub_settings)
    series_id = next(c["ID"] for c in changes(client) if c["ChangeType"] == "NewSeries")
    tailer = make_tailer(qi_db.settings, engine, client, tmp_path)
    with engine.begin() as conn:  # what a NewSeries leaves when no Stable* change follows
        recorder.series_arrived(conn, [(series_id, parse_orthanc_time(changes(client)[0]["Date"]))])
    wait_until(lambda: client.study(client.series(series_id)["ParentStudy"]).get("IsStable"), timeout=30,
               what="study stable in Orthanc")
    assert tailer.sweep_missed_stability() == 1
    row = recorded(engine, series_id)
    assert row is not None and row.instance_count == 2
    assert arrivals(engine) == {}


def test_an_arrival_whose_series_was_deleted_is_dropped_by_the_sweep(
        qi_db, engine, client, clean_orthanc, hub_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(tailer_module, "STABILITY_GRACE_S", 0)
    send(make_study(1, 1, "CR DELETED"), hub_settings)
    new_series = next(c for c in changes(client) if c["ChangeType"] == "NewSeries")
    tailer = make_tailer(qi_db.settings, engine, client, tmp_path)
    with engine.begin() as conn:
        recorder.series_arrived(conn, [(new_series["ID"], parse_orthanc_time(new_series["Date"]))])
    clean_orthanc.rest.delete(f"/series/{new_series['ID']}")
    wait_until(lambda: tailer.sweep_missed_stability() == 0 and not arrivals(engine), timeout=10,
               what="the arrival of a deleted series dropped")
    assert recorded(engine, new_series["ID"]) is None


def test_an_unrecorded_arrival_within_the_timeout_holds_the_ai_overdue_verdict(qi_db, engine):
    """It may be the study's AI result, arrived in time but recorded only once stable."""
    now = datetime.now(UTC)
    sent = now - timedelta(hours=1)
    timeout = 1800
    with engine.begin() as conn:
        study = app_flows.arrive(conn, 1, sent)
        app_flows.send_ok(conn, app_flows.route(conn, study, sent, "MERCURE", purpose=Purpose.AI), sent)
        recorder.series_arrived(conn, [("in-time", sent + timedelta(seconds=timeout - 5)),
                                       ("before-the-send", sent - timedelta(seconds=5)),
                                       ("too-late", sent + timedelta(seconds=timeout + 5))])
    assert check_ai_overdue(engine, timeout) == 0
    with engine.begin() as conn:
        recorder.take_arrival(conn, "in-time")
    assert check_ai_overdue(engine, timeout) == 1


def test_a_step_returns_after_its_time_with_the_rest_of_the_page_left_for_the_next(
        qi_db, engine, client, hub_settings, tmp_path, monkeypatch):
    """The main loop reports health and runs its checks between steps: a backlog must not hold it for a page."""
    send(make_study(1, 2, "CR BACKLOG"), hub_settings)
    wait_until(lambda: any(c["ChangeType"] == "StableStudy" for c in changes(client)), timeout=30,
               what="study stable in Orthanc")
    log = changes(client)
    stable_series = next(c["Seq"] for c in log if c["ChangeType"] == "StableSeries")
    monkeypatch.setattr(tailer_module, "STEP_MAX_S", 0.0)
    monkeypatch.setattr(tailer_module, "GROUP_MAX", 1)  # a group ends after one handled change
    tailer = make_tailer(qi_db.settings, engine, client, tmp_path)
    assert tailer.step() == len([c for c in log if c["Seq"] <= stable_series])
    with engine.connect() as conn:
        assert read_cursor(conn) == stable_series
    while tailer.step():
        pass
    with engine.connect() as conn:
        assert read_cursor(conn) == log[-1]["Seq"]
        assert conn.execute(text("SELECT count(*) FROM studies WHERE stable_at IS NOT NULL")).scalar_one() == 1


def test_a_caught_up_step_lets_the_loop_wait_and_only_stable_changes_wake_the_dispatcher(
        qi_db, engine, client, hub_settings, tmp_path):
    """A page Orthanc says is complete ends the burst of steps; NewInstance/NewSeries queue no job."""
    send(make_study(1, 3, "CR CAUGHT UP"), hub_settings)
    log = changes(client)
    ingest = next((i for i, c in enumerate(log) if c["ChangeType"].startswith("Stable")), len(log))
    wakes: list[int] = []
    tailer = make_tailer(qi_db.settings.model_copy(update={"changes_batch": ingest - 1}), engine, client,
                         tmp_path)
    tailer.on_commit = lambda: wakes.append(tailer.cursor)
    tailer.step()
    assert tailer.behind, "a full page: more changes are waiting"
    assert wakes == [], "no Stable* change yet, so no job can be new"
    tailer.settings = qi_db.settings
    tailer.step()
    assert not tailer.behind, "Orthanc's page was Done"

    wait_until(lambda: any(c["ChangeType"] == "StableSeries" for c in changes(client)), timeout=30,
               what="series stable in Orthanc")
    tailer.step()
    assert wakes, "a StableSeries was handled: the dispatcher is woken"


def test_while_instances_stream_in_a_caught_up_worker_polls_changes_once_per_poll_interval(
        qi_db, engine, hub_settings, tmp_path, clean_orthanc):
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
