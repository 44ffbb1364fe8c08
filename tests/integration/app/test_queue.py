"""Queue: jobs by state, retry and cancel, confirmed bulk retry of filtered dead jobs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from testkit import app_flows
from tests.integration.app.conftest import AppEnv, assert_clean, table_rows

pytestmark = pytest.mark.integration


def choose_state(at: AppTest, state: str) -> AppTest:
    at.radio(key="queue_state").set_value(state)
    at.run()
    assert_clean(at)
    return at


def dead_jobs(app_env: AppEnv, destination: str, count: int, start: int) -> list[int]:
    """`count` studies whose delivery to `destination` ran out of attempts."""
    now = datetime.now(UTC)
    ids = []
    with app_env.engine.begin() as conn:
        for n in range(start, start + count):
            flow = app_flows.arrive(conn, n, now - timedelta(minutes=n))
            job = app_flows.route(conn, flow, now - timedelta(minutes=n - 1), destination)
            app_flows.send_fail(conn, job, now - timedelta(seconds=n), error="refused", retry_at=None)
            ids.append(job)
    return ids


def test_states_are_listed_with_counts_and_retry_times(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("queue", as_="viewer")
    options = at.radio(key="queue_state").options
    assert options == ["queued (1)", "sending (0)", "failed (1)", "dead (1)", "cancelled (0)"]
    assert [r["Job"] for r in table_rows(at, "Job")] == [flows["queued"].jobs["delivery:LPCHROUTER"]]
    choose_state(at, "failed")
    [row] = table_rows(at, "Job")
    assert row["Destination"] == "MODLINK" and row["Last error"] == "timeout"
    assert row["Next attempt in"].startswith(("9 min", "10 min"))
    choose_state(at, "sending")
    assert "No sending jobs" in at.info[0].value


def test_a_viewer_cannot_act(app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]) -> None:
    at = choose_state(open_page("queue", as_="viewer"), "dead")
    assert at.multiselect(key="queue_selected").disabled
    assert at.button(key="queue_bulk").disabled
    with pytest.raises(AppTestError):
        at.button(key="queue_bulk").click()
    assert app_env.scalar("SELECT count(*) FROM routing_jobs WHERE state = 'dead'") == 1


def test_operator_retries_and_cancels_selected_jobs(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = choose_state(open_page("queue", as_="operator"), "failed")
    failed = flows["retrying"].jobs["delivery:MODLINK"]
    at.multiselect(key="queue_selected").set_value([failed])
    at.run()
    at.button(key="queue_cancel").click()
    at.run()
    assert_clean(at)
    assert app_env.scalar("SELECT state FROM routing_jobs WHERE id = :id", id=failed) == "cancelled"
    assert "Cancel: 1 job(s) done." in at.success[0].value
    choose_state(at, "cancelled")
    at.multiselect(key="queue_selected").set_value([failed])
    at.run()
    at.button(key="queue_retry").click()
    at.run()
    assert app_env.sql("SELECT state, attempts FROM routing_jobs WHERE id = :id", id=failed)[0] == ("queued", 0)
    assert [a.action for a in app_env.sql("SELECT action FROM audit_log WHERE target = :t ORDER BY id",
                                          t=f"job:{failed}")] == ["job.cancel", "job.retry"]


def test_bulk_retry_of_filtered_dead_jobs_needs_confirmation(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    to_pacs = dead_jobs(app_env, "PACSX", 3, 500)
    other = flows["dead"].jobs["delivery:LPCHROUTER"]
    at = choose_state(open_page("queue", as_="operator"), "dead")
    assert {r["Job"] for r in table_rows(at, "Job")} == {*to_pacs, other}
    at.selectbox(key="queue_dest").set_value("PACSX")
    at.run()
    assert {r["Job"] for r in table_rows(at, "Job")} == set(to_pacs)
    at.button(key="queue_bulk").click()
    at.run()
    assert "Retry 3 dead job(s) matching the filter?" in at.warning[0].value
    assert app_env.scalar("SELECT count(*) FROM routing_jobs WHERE state = 'dead'") == 4  # not yet
    at.button(key="bulk_retry_yes").click()
    at.run()
    assert_clean(at)
    assert "3 dead job(s) queued again" in at.success[0].value
    states = dict(app_env.sql("SELECT id, state FROM routing_jobs WHERE id = ANY(:ids)", ids=[*to_pacs, other]))
    assert [states[j] for j in to_pacs] == ["queued"] * 3 and states[other] == "dead"
    assert len(app_env.audit("job.retry")) == 3


def test_bulk_retry_can_be_called_off(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = choose_state(open_page("queue", as_="operator"), "dead")
    at.button(key="queue_bulk").click()
    at.run()
    at.button(key="bulk_retry_no").click()
    at.run()
    assert not at.warning
    assert app_env.scalar("SELECT count(*) FROM routing_jobs WHERE state = 'dead'") == 1


def test_pages_of_jobs(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    ids = dead_jobs(app_env, "PACSX", 30, 700)
    at = choose_state(open_page("queue"), "dead")
    at.selectbox(key="queue_size").set_value(25)
    at.run()
    first = [r["Job"] for r in table_rows(at, "Job")]
    at.button(key="queue_older").click()
    at.run()
    second = [r["Job"] for r in table_rows(at, "Job")]
    assert len(first) == 25 and len(second) == 5
    assert first + second == sorted(ids, reverse=True)
