"""A viewer can look but never act: no enabled action anywhere, and forged clicks do nothing.

The pages run in-process through AppTest from app/main.py (real login gate, real role
checks, real database and Orthanc). Besides the visible state of every control, each
operator action is also "clicked" the way a tampered browser could (a trigger for a
button rendered disabled; Streamlit 1.67 discards it server-side, and each page checks
the role again with app.components.access.can before acting), and by an operator who
was demoted after the page was drawn. The enforcement is server-side: the role lives
in the server's session state and is re-read from app_users. core/operations.py has no
role check of its own on purpose: its callers hold the database password, and the
CLI runs as the OS user, so an actor name passed in could not be verified anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from testkit import app_flows
from testkit.harness.ports import free_port
from tests.integration.app.conftest import MAIN, USERS, AppEnv, assert_clean, open_session, recheck_due

pytestmark = pytest.mark.integration

PAGES = ("overview", "studies", "queue", "destinations", "rules", "audit",
         "qi_turnaround", "qi_ai_round_trip", "qi_failures", "qi_volumes", "qi_sla")
# Controls that only read, filter or navigate (pagers end in _first/_newer/_older).
READ_ONLY = {"logout_button", "overview_refresh", "studies_open", "FormSubmitter:study_filters-Search",
             "FormSubmitter:audit_filters-Filter", "FormSubmitter:study_lookup-Find"}


def _detail(open_page: Callable[..., AppTest], study_id: int, as_: str) -> AppTest:
    at = open_page("studies", as_=as_)
    at.switch_page("pages/study_detail.py")
    at.query_params["study"] = str(study_id)
    at.run()
    assert_clean(at)
    return at


def _enabled_actions(at: AppTest) -> list[str]:
    return [b.key or b.label for b in at.button
            if not b.disabled and b.key not in READ_ONLY and not str(b.key).endswith(("_first", "_newer", "_older"))]


def _forge_click(at: AppTest, key: str) -> AppTest:
    """Send the trigger a tampered client can send for a button rendered disabled."""
    button = at.button(key=key)
    assert button.disabled, f"{key} is enabled for this user"
    button._value = True  # AppTest's click() refuses disabled buttons; a raw websocket does not
    at.run()
    assert_clean(at)
    return at


def _job_states(app_env: AppEnv) -> dict[int, str]:
    return dict(app_env.sql("SELECT id, state FROM routing_jobs"))


def _changes(app_env: AppEnv) -> list[str]:
    """Audit entries other than logins and the fixture's users: every action writes one."""
    return [r.action for r in app_env.sql(
        "SELECT action FROM audit_log WHERE action NOT LIKE 'auth.%' AND source <> 'setup' ORDER BY id")]


def test_a_viewer_has_no_enabled_action_on_any_page(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("PACS", "PACS", free_port())
    for page in PAGES:
        at = open_page(page, as_="viewer")
        assert _enabled_actions(at) == [], page
        assert not at.text_area, f"{page}: an editor for a viewer"
    for state in ("queued", "failed", "dead"):
        at = open_page("queue", as_="viewer")
        at.radio(key="queue_state").set_value(state).run()
        assert at.button(key="queue_bulk" if state == "dead" else "queue_cancel").disabled
        assert at.multiselect(key="queue_selected").disabled
        assert _enabled_actions(at) == [], state
    for flow in ("dead", "queued", "delivered"):
        at = _detail(open_page, flows[flow].study_id, "viewer")
        assert {at.button(key=k).disabled for k in ("detail_retry", "detail_cancel", "detail_resend")} == {True}
        assert _enabled_actions(at) == [], flow
    # The same pages do offer the actions to an operator (so the check above means something).
    operator = _detail(open_page, flows["dead"].study_id, "operator")
    assert set(_enabled_actions(operator)) == {"detail_retry", "detail_cancel", "detail_resend"}
    # Hold is an operator's action; Release stays disabled while nothing is held.
    assert set(_enabled_actions(open_page("destinations", as_="operator"))) == {"echo_one", "echo_all", "hold_button"}


def test_user_management_is_out_of_reach_below_admin(app_env: AppEnv) -> None:
    for role in ("viewer", "operator"):
        at = AppTest.from_file(str(MAIN), default_timeout=60)
        at.session_state["_session_id"] = open_session(USERS[role])
        at.run()
        with pytest.raises(ValueError):  # the Users page is not registered for this role
            at.switch_page("pages/users.py")
        page = AppTest.from_file(str(MAIN.parent / "pages" / "users.py"), default_timeout=60)
        page.session_state["_session_id"] = open_session(USERS[role])
        page.run()
        assert "needs the admin role" in page.error[0].value
        assert not page.text_input and not page.button and not page.dataframe
    assert app_env.scalar("SELECT count(*) FROM app_users") == 3


def test_forged_clicks_by_a_viewer_change_nothing(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    down = free_port()
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", down)
    before = _job_states(app_env)
    dead_job = flows["dead"].jobs["delivery:LPCHROUTER"]
    assert before[dead_job] == "dead"

    at = _detail(open_page, flows["dead"].study_id, "viewer")
    _forge_click(at, "detail_retry")
    _forge_click(at, "detail_cancel")
    _forge_click(at, "detail_resend")
    assert not at.warning, "a forged Resend… must not even ask for confirmation"
    assert not [b for b in at.button if b.key == "resend_yes"]

    queue = open_page("queue", as_="viewer")
    queue.radio(key="queue_state").set_value("dead").run()
    _forge_click(queue, "queue_bulk")
    assert not [b for b in queue.button if b.key == "bulk_retry_yes"]

    destinations = open_page("destinations", as_="viewer")
    _forge_click(destinations, "echo_one")
    _forge_click(destinations, "echo_all")
    assert "destination_echo" not in destinations.session_state
    assert not [df for df in destinations.dataframe if "Latency (ms)" in df.value.columns]

    assert _job_states(app_env) == before
    assert _changes(app_env) == []


def test_an_operator_demoted_after_the_page_was_drawn_cannot_act(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    from core import auth

    dead_job = flows["dead"].jobs["delivery:LPCHROUTER"]
    at = _detail(open_page, flows["dead"].study_id, "operator")
    retry = at.button(key="detail_retry")
    assert not retry.disabled  # what the operator's browser still shows
    with app_env.engine.begin() as conn:
        auth.set_role(conn, USERS["operator"], "viewer", actor=USERS["admin"], source="ui")
    recheck_due(at)
    retry.click().run()
    assert_clean(at)
    assert at.session_state["user"]["role"] == "viewer"
    assert _job_states(app_env)[dead_job] == "dead"
    assert _changes(app_env) == ["user.role"]


def test_the_same_click_works_for_an_operator(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    """Control for the test above: the guard is the role, not a broken button."""
    dead_job = flows["dead"].jobs["delivery:LPCHROUTER"]
    at = _detail(open_page, flows["dead"].study_id, "operator")
    at.button(key="detail_retry").click().run()
    assert _job_states(app_env)[dead_job] == "queued"
    assert _changes(app_env) == ["job.retry"]
