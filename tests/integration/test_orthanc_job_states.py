"""Orthanc store jobs that do not finish by themselves reach a recorded outcome.

Real Orthanc, PostgreSQL and worker process; the destination is a slow storage SCP (it
sleeps before answering each C-STORE), so a store job stays Running long enough to be
paused through Orthanc's REST API, or to outlive a tiny deadline. Orthanc's Retry state,
which its store jobs never enter, is covered by tests/unit/test_dispatcher_job_states.py.

A cancelled store may have delivered part of its batch, and its retry sends the batch
again (the failure path): these tests check that every instance arrives, not that it
arrives once.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from pynetdicom.events import Event
from sqlalchemy import text

from core.orthanc_client import CANCELED_JOB_ERROR, OrthancClient
from testkit.dicom_peers import StorageSCP
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, all_jobs_final, jobs, rules_file, send
from testkit.synthetic import make_study
from worker.dispatcher import Dispatcher

pytestmark = pytest.mark.integration


class SlowSCP(StorageSCP):
    """A PACS that takes `delay_s` to answer each C-STORE; with `first_only`, only on its first association."""

    def __init__(self, *args, delay_s: float, first_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s
        self.first_only = first_only
        self._first: object | None = None
        self._guard = threading.Lock()

    def _on_c_store(self, event: Event) -> int:
        with self._guard:
            if self._first is None:
                self._first = event.assoc
            slow = not self.first_only or event.assoc is self._first
        if slow:
            time.sleep(self.delay_s)
        return super()._on_c_store(event)


@pytest.fixture
def slow_pacs(tmp_path, clean_orthanc):
    started: list[SlowSCP] = []

    def start(**kwargs) -> SlowSCP:
        scp = SlowSCP("PACS", free_port(), tmp_path / f"slow-{len(started)}", **kwargs).start()
        started.append(scp)
        clean_orthanc.rest.put_modality("PACS", scp.aet, scp.port)
        return scp

    yield start
    for scp in started:
        scp.stop()


def failures(db) -> list[dict]:
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT detail FROM events WHERE type = 'delivery_failed' ORDER BY id")).scalars()]


def started_orthanc_jobs(db) -> list[str]:
    with db.connect() as conn:
        return list(conn.execute(text(
            "SELECT detail->>'orthanc_job' FROM events WHERE type = 'delivery_started' ORDER BY id")).scalars())


def test_a_paused_store_is_resumed_once_then_cancelled_and_retried(env, workers, db, slow_pacs, clean_orthanc,
                                                                  hub_settings, tmp_path):
    pacs = slow_pacs(delay_s=0.3)
    rest = clean_orthanc.rest
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS), "SEND_PAUSED_GRACE_S": "1"})
    send(make_study(1, 12, "CR PAUSED"), hub_settings)
    first = wait_until(lambda: pacs.total_receipts >= 1 and jobs(db)[0]["orthanc_job_id"], timeout=40,
                       what="the store under way")

    rest.post(f"/jobs/{first}/pause", {})
    paused_at = pacs.total_receipts
    # Orthanc pauses after the instance under way; only a resume lets more instances through.
    wait_until(lambda: pacs.total_receipts >= paused_at + 3, timeout=30, what="the paused store resumed")

    rest.post(f"/jobs/{first}/pause", {})  # paused again: meant; cancelled after SEND_PAUSED_GRACE_S
    wait_until(lambda: failures(db), timeout=30, what="the failed attempt")
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 12, timeout=60, what="delivery by the retry")

    job = jobs(db)[0]
    assert job["state"] == "succeeded" and job["attempts"] == 2
    [failure] = failures(db)
    assert failure["error"].startswith(f"Orthanc job {first} paused for ")
    assert "after the worker had resumed it once" in failure["error"] and failure["code"] == CANCELED_JOB_ERROR
    assert rest.get(f"/jobs/{first}")["ErrorCode"] == CANCELED_JOB_ERROR
    assert started_orthanc_jobs(db)[0] == first and len(started_orthanc_jobs(db)) == 2


def test_a_store_past_its_deadline_is_cancelled_and_retried(env, workers, db, slow_pacs, hub_settings, tmp_path,
                                                            clean_orthanc):
    pacs = slow_pacs(delay_s=2.0, first_only=True)  # the first store crawls (12 s), the retry does not
    workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS), "SEND_DEADLINE_FLOOR_S": "3",
             "SEND_DEADLINE_INSTANCES_PER_S": "1000", "SEND_DEADLINE_MB_PER_S": "1000"})
    send(make_study(1, 6, "CR STUCK"), hub_settings)
    wait_until(lambda: all_jobs_final(db, 1) and pacs.instance_count == 6, timeout=60, what="delivery by the retry")

    job = jobs(db)[0]
    assert job["state"] == "succeeded" and job["attempts"] == 2
    [failure] = failures(db)
    first = started_orthanc_jobs(db)[0]
    assert failure["error"].startswith(f"Orthanc job {first} still Running after ")
    assert "(deadline 3 s for 6 instances" in failure["error"] and failure["error"].endswith("cancelled in Orthanc")
    assert failure["code"] == CANCELED_JOB_ERROR
    stopped = clean_orthanc.rest.get(f"/jobs/{first}")
    assert stopped["State"] == "Failure" and stopped["ErrorCode"] == CANCELED_JOB_ERROR


def test_a_cancelled_store_is_never_adopted(db, qi_db, slow_pacs, clean_orthanc, hub_settings):
    """An adopter looking for a dead sender's store passes over a job cancelled in Orthanc."""
    slow_pacs(delay_s=0.2)
    rest = clean_orthanc.rest
    send(make_study(1, 4, "CR ADOPT"), hub_settings)
    series = set(rest.get("/series"))
    intent = datetime.now(UTC)
    cancelled = rest.store_async("PACS", sorted(series))
    rest.post(f"/jobs/{cancelled}/cancel", {})
    assert rest.wait_job(cancelled)["ErrorCode"] == CANCELED_JOB_ERROR
    live = rest.store_async("PACS", sorted(series))
    orthanc = OrthancClient.from_settings(qi_db.settings)
    try:
        found = Dispatcher(qi_db.settings, db, orthanc, worker_id="adopter")._find_store("PACS", series, intent)
    finally:
        orthanc.close()
    assert found is not None and found["ID"] == live
