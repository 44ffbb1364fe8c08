"""Held destinations in the app: the same line on Overview, Destinations and Queue, and
the operator's Hold and Release buttons (core.operations, audited as the logged-in user).

Holds are seeded as rows (tests/integration/holds_fixture.py), the way the worker and
core.operations write them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from testkit import app_flows
from testkit.harness.ports import free_port
from tests.integration import holds_fixture
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, table_rows

pytestmark = pytest.mark.integration


def warnings(at: AppTest) -> list[str]:
    return [str(w.value) for w in at.warning]


def hhmm(app_env: AppEnv, at: datetime) -> str:
    return at.astimezone(app_env.settings.zone).strftime("%H:%M")


def hold_row(app_env: AppEnv, destination: str) -> tuple | None:
    rows = app_env.sql("SELECT kind, held_by, reason, next_probe_at FROM destination_holds WHERE destination = :d",
                       d=destination)
    return tuple(rows[0]) if rows else None


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click()
    at.run()
    assert_clean(at)
    return at


def test_every_page_says_outage_since_and_jobs_waiting(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    # LPCHROUTER: the standard set's queued job plus one more (its dead job does not wait: it
    # needs an operator, not the destination). MODLINK: the job waiting to retry.
    now = datetime.now(UTC)
    with app_env.engine.begin() as conn:
        extra = app_flows.arrive(conn, 50, now - timedelta(minutes=3))
        app_flows.route(conn, extra, now - timedelta(minutes=2), "LPCHROUTER")
    outage_at = holds_fixture.this_minute()
    operator_at = outage_at - timedelta(minutes=1)
    with app_env.engine.begin() as conn:
        holds_fixture.outage(conn, "LPCHROUTER", outage_at)
        holds_fixture.operator_hold(conn, "MODLINK", operator_at, "ana", "PACS upgrade")
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", free_port())
    app_env.orthanc.rest.put_modality("LPCHTROUTER", "LPCHTROUTER", free_port())
    outage_text = f"LPCHROUTER: outage since {hhmm(app_env, outage_at)}, 2 jobs waiting"
    operator_text = f"MODLINK: on hold by ana since {hhmm(app_env, operator_at)} (PACS upgrade), 1 job waiting"

    for page in ("overview", "destinations", "queue"):
        shown = warnings(open_page(page, as_="viewer"))
        assert any(w.startswith(outage_text) and "resumes by itself" in w for w in shown), (page, shown)
        assert any(w.startswith(operator_text) and "releases it" in w for w in shown), (page, shown)
        assert not any(w.startswith("LPCHTROUTER") for w in shown), (page, shown)

    rows = {r["Name"]: r for r in table_rows(open_page("destinations", as_="viewer"), "Hold")}
    assert rows["LPCHROUTER"]["Hold"] == outage_text.removeprefix("LPCHROUTER: ")
    assert rows["MODLINK"]["Hold"].startswith("on hold by ana since")
    assert rows["MODLINK"]["Defined in"] == "neither Orthanc nor .env (still held)"  # listed so it can be released
    assert rows["LPCHTROUTER"]["Hold"] == ""


def test_nothing_held_shows_no_hold_banner(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    for page in ("overview", "queue"):
        assert not any("since" in w for w in warnings(open_page(page, as_="viewer"))), page


def test_operator_holds_and_releases_with_a_reason_audited_as_themselves(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", free_port())
    at = open_page("destinations", as_="operator")
    at.selectbox(key="hold_target").set_value("LPCHROUTER")
    at.run()
    assert at.button(key="release_button").disabled, "nothing to release yet"
    at.text_input(key="hold_reason").input("PACS upgrade")
    click(at, "hold_button")
    assert hold_row(app_env, "LPCHROUTER") == ("operator", USERS["operator"], "PACS upgrade", None)
    assert any("LPCHROUTER is on hold" in s.value for s in at.success)
    assert any(w.startswith(f"LPCHROUTER: on hold by {USERS['operator']} since ") and "(PACS upgrade), 1 job waiting"
               in w for w in warnings(at))
    assert at.button(key="hold_button").disabled, "an operator hold cannot be put twice"
    [hold] = app_env.audit("destination.hold")
    assert (hold.actor, hold.source, hold.target) == (USERS["operator"], "ui", "destination:LPCHROUTER")
    assert hold.before == {"held": False}
    assert hold.after == {"held": True, "kind": "operator", "reason": "PACS upgrade"}

    click(at, "release_button")
    assert hold_row(app_env, "LPCHROUTER") is None
    assert any("LPCHROUTER released" in s.value for s in at.success)
    assert not any(w.startswith("LPCHROUTER:") for w in warnings(at))
    [release] = app_env.audit("destination.release")
    assert (release.actor, release.source) == (USERS["operator"], "ui")
    assert release.before["kind"] == "operator" and release.after == {"held": False}


def test_operator_takes_over_an_outage_hold_or_releases_it(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    started = holds_fixture.this_minute() - timedelta(minutes=5)
    with app_env.engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", started)
    app_env.orthanc.rest.put_modality("PACS", "PACS", free_port())
    at = open_page("destinations", as_="admin")
    at.selectbox(key="hold_target").set_value("PACS")
    at.run()
    assert any("next C-ECHO probe at" in c.value and holds_fixture.PROBE_ERROR in c.value for c in at.caption)
    assert not at.button(key="hold_button").disabled and not at.button(key="release_button").disabled

    # Hold: the outage hold becomes the operator's (the worker stops probing it).
    click(at, "hold_button")
    assert hold_row(app_env, "PACS") == ("operator", USERS["admin"], None, None)
    [hold] = app_env.audit("destination.hold")
    assert hold.before["kind"] == "outage" and hold.before["held_by"] == "worker"
    assert hold.before["last_error"] == holds_fixture.PROBE_ERROR
    assert any(w.startswith(f"PACS: on hold by {USERS['admin']} since ") for w in warnings(at))

    # Release of an outage hold deletes it; the worker holds it again if PACS is still down.
    with app_env.engine.begin() as conn:
        conn.execute(text("DELETE FROM destination_holds"))
        conn.execute(text("DELETE FROM destination_outages"))
        holds_fixture.outage(conn, "PACS", started)
    at.run()
    click(at, "release_button")
    assert hold_row(app_env, "PACS") is None
    assert any("PACS released" in s.value and "holds it again" in s.value for s in at.success)
    release = app_env.audit("destination.release")[-1]
    assert release.before["kind"] == "outage" and release.actor == USERS["admin"]


def test_a_viewer_cannot_hold_or_release(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    with app_env.engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", holds_fixture.this_minute())
    app_env.orthanc.rest.put_modality("PACS", "PACS", free_port())
    at = open_page("destinations", as_="viewer")
    assert at.button(key="hold_button").disabled and at.button(key="release_button").disabled
    assert at.text_input(key="hold_reason").disabled
    with pytest.raises(AppTestError):
        at.button(key="release_button").click()
    assert hold_row(app_env, "PACS") is not None
    assert app_env.audit("destination.release") == []


def test_holds_work_while_orthanc_is_down(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    """A PACS downtime is when holds matter; Orthanc being down too must not hide them."""
    app_env.reconfigure(ORTHANC_WEB_PORT=str(free_port()), MODALITY_PACS="PACS|127.0.0.1|11112")
    at = open_page("destinations", as_="operator")
    assert "Orthanc is unavailable" in at.error[0].value
    at.selectbox(key="hold_target").set_value("PACS")
    at.run()
    click(at, "hold_button")
    assert hold_row(app_env, "PACS") == ("operator", USERS["operator"], None, None)
