"""Live progress of sends in flight (issue 16): instances sent of the batch, from Orthanc's job.

A real Orthanc 1.10.1 store job to a slow PACS (it sleeps before answering each C-STORE)
stays Running while the Queue and the study page are drawn; both read GET /jobs/{id}
(Progress, Content.InstancesCount) through core.orthanc_client and show "N of M
instances". With Orthanc unreachable the pages still render and say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import recorder
from core.orthanc_client import OrthancClient
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study
from tests.integration.app.conftest import AppEnv, assert_clean, table_rows
from tests.integration.test_orthanc_job_states import SlowSCP
from worker.dispatcher import CLAIM_LOCK_KEY, LIVENESS_LOCK_NS

pytestmark = pytest.mark.integration

INSTANCES = 12
PROGRESS = re.compile(rf"^(\d+) of {INSTANCES} instances \((\d+) %\)$")


@pytest.fixture
def store_in_flight(app_env: AppEnv, tmp_path: Path) -> Iterator[tuple[app_flows.Flow, str]]:
    """A study whose delivery job is `sending`, carried by a Running Orthanc store to a slow PACS."""
    pacs = SlowSCP("PACS", free_port(), tmp_path / "pacs", delay_s=0.5).start()
    rest = app_env.orthanc.rest
    rest.put_modality("PACS", pacs.aet, pacs.port)
    _, series = app_flows.upload(rest, make_study(1, INSTANCES, "CR PROGRESS"))
    orthanc_job = rest.store_async("PACS", sorted(series.values()))
    with app_env.engine.begin() as conn:  # what the dispatcher records: claimed, then started
        flow = app_flows.arrive(conn, 1, datetime.now(UTC))
        job_id = app_flows.route(conn, flow, datetime.now(UTC), "PACS")
        [claimed] = recorder.claim_jobs(conn, worker_id="w1", now=datetime.now(UTC), limit=1, in_flight=[],
                                        per_destination=4, claim_lock_key=CLAIM_LOCK_KEY,
                                        liveness_ns=LIVENESS_LOCK_NS, stale_s=30)
        assert claimed.id == job_id
        recorder.job_started(conn, job_id, orthanc_job_id=orthanc_job, at=datetime.now(UTC))
    wait_until(lambda: 0 < rest.get(f"/jobs/{orthanc_job}")["Progress"] < 100, timeout=20, what="a store under way")
    try:
        yield flow, orthanc_job
    finally:
        rest.post(f"/jobs/{orthanc_job}/cancel", {})
        pacs.stop()


def _progress(rows: list[dict]) -> str:
    (row,) = [r for r in rows if r.get("Progress")]
    return str(row["Progress"])


def test_orthanc_reports_a_store_jobs_instances(app_env: AppEnv, store_in_flight: tuple[app_flows.Flow, str]) -> None:
    """What the pages rely on, from Orthanc 1.10.1 itself: the batch size and a percentage."""
    _, orthanc_job = store_in_flight
    with OrthancClient.from_settings(app_env.settings) as client:
        progress = client.store_progress(orthanc_job)
    assert progress.state == "Running" and progress.total == INSTANCES and progress.failed == 0
    assert 0 < progress.percent < 100 and progress.sent is not None and 0 <= progress.sent < INSTANCES
    assert PROGRESS.match(progress.label())


def test_queue_and_study_page_show_instances_sent(
    app_env: AppEnv, store_in_flight: tuple[app_flows.Flow, str], open_page: Callable[..., AppTest]
) -> None:
    flow, _ = store_in_flight
    queue = open_page("queue", as_="viewer")
    queue.radio(key="queue_state").set_value("sending").run()
    assert_clean(queue)
    first = PROGRESS.match(_progress(table_rows(queue, "Job")))
    assert first, table_rows(queue, "Job")

    detail = open_page("studies", as_="viewer")
    detail.switch_page("pages/study_detail.py")
    detail.query_params["study"] = str(flow.study_id)
    detail.run()
    assert_clean(detail)
    later = PROGRESS.match(_progress(table_rows(detail, "Job")))
    assert later and int(later.group(1)) >= int(first.group(1))  # it moves on, never back


def test_orthanc_down_leaves_the_pages_working(
    app_env: AppEnv, store_in_flight: tuple[app_flows.Flow, str], open_page: Callable[..., AppTest]
) -> None:
    app_env.reconfigure(ORTHANC_WEB_PORT=str(free_port()))
    queue = open_page("queue", as_="viewer")
    queue.radio(key="queue_state").set_value("sending").run()
    assert_clean(queue)
    assert _progress(table_rows(queue, "Job")) == "unknown: Orthanc unreachable"
