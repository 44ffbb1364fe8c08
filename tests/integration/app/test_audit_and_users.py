"""Audit log page (filters, pages) and the admins' Users page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core import auth
from core.operations import cancel_job, retry_job
from testkit import app_flows
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, open_session, table_rows
from viewer.audit import StudyAudit

pytestmark = pytest.mark.integration


def filter_audit(at: AppTest, **fields: object) -> list[dict]:
    for key, value in fields.items():
        at.get_by_key(f"audit_{key}").set_value(value)  # type: ignore[union-attr]
    at.form_submit_button[0].click()
    at.run()
    assert_clean(at)
    try:
        return table_rows(at, "Action")
    except AssertionError:
        return []


def test_audit_log_filters_and_pages(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    job = flows["dead"].jobs["delivery:LPCHROUTER"]
    with app_env.engine.begin() as conn:
        retry_job(conn, job, actor="oscar", source="ui")
        cancel_job(conn, job, actor="cli-user", source="cli")
        for n in range(55):
            auth.create_user(conn, f"bulk{n:02d}", "a-long-password", "viewer", actor="ada", source="ui", rounds=4)
    at = open_page("audit", as_="viewer")
    rows = table_rows(at, "Action")
    assert len(rows) == 50 and rows[0]["Action"] == "user.create" and rows[0]["Target"] == "user:bulk54"
    at.button(key="audit_older").click()
    at.run()
    older = table_rows(at, "Action")
    # 3 fixture users + retry + cancel + 55 users = 60 entries, many sharing one timestamp.
    assert len(older) == 10 and at.button(key="audit_older").disabled
    keys = [(r["Action"], r["Target"]) for r in rows + older]
    assert len(set(keys)) == 60

    retry = filter_audit(at, action="job.")
    assert [(r["Who"], r["Action"], r["Source"]) for r in retry] == [
        ("cli-user", "job.cancel", "cli"), ("oscar", "job.retry", "ui")]
    assert '"state": "dead"' in retry[1]["Before"]
    assert [r["Who"] for r in filter_audit(at, action="", actor="cli-user")] == ["cli-user"]
    assert [r["Target"] for r in filter_audit(at, actor="", target=f"job:{job}")] == [f"job:{job}"] * 2
    assert len(filter_audit(at, target="", source="cli")) == 1
    tomorrow = datetime.now(app_env.settings.zone).date() + timedelta(days=1)
    assert filter_audit(at, source="", **{"from": tomorrow}) == []


def test_studies_opened_in_the_viewer_are_listed(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    """What the OHIF gateway records (viewer/audit.py) shows on the Audit page, found by its source
    and action, and linked to the study."""
    flow = flows["delivered"]
    recorder = StudyAudit(app_env.engine)
    asyncio.run(recorder.record("vera", "ab" * 32, flow.study_uid, level="series"))
    asyncio.run(recorder.record("vera", "ab" * 32, flow.study_uid, level="frames"))  # same minute: nothing more
    at = open_page("audit", as_="viewer")
    rows = filter_audit(at, source="viewer")
    assert [(r["Who"], r["Action"], r["Source"], r["Target"]) for r in rows] == [
        ("vera", "viewer.study_open", "viewer", f"study:{flow.study_id}")]
    assert flow.study_uid in rows[0]["After"]
    assert rows[0]["Study #"] == f"study_detail?study={flow.study_id}"
    assert [r["Action"] for r in filter_audit(at, source="", action="viewer.")] == ["viewer.study_open"]


def test_admin_manages_users(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    at = open_page("users")
    assert {r["User"]: r["Role"] for r in table_rows(at, "Failed logins")} == {
        "ada": "admin", "oscar": "operator", "vera": "viewer"}
    at.text_input(key="user_add_name").input("nina")
    at.selectbox(key="user_add_role").set_value("operator")
    at.form_submit_button[0].click()
    at.run()
    assert_clean(at)
    password = at.code[0].value
    with app_env.engine.begin() as conn:
        assert auth.authenticate(conn, "nina", password).user.role == "operator"  # type: ignore[union-attr]
    assert app_env.audit("user.create")[-1].after == {"role": "operator"}
    assert password not in str(app_env.sql("SELECT * FROM audit_log"))
    at.run()
    assert not at.code  # shown once only

    at.selectbox(key="user_target").set_value("nina")
    at.run()
    at.selectbox(key="user_role_nina").set_value("viewer")
    at.run()
    at.button(key="user_save_role").click().run()
    assert app_env.scalar("SELECT role FROM app_users WHERE username = 'nina'") == "viewer"

    with app_env.engine.begin() as conn:
        for _ in range(auth.LOCKOUT_THRESHOLD):
            auth.authenticate(conn, "nina", "wrong-password-x")
    at.run()
    at.button(key="user_unlock").click().run()
    assert app_env.sql("SELECT failed_logins, locked_until FROM app_users WHERE username = 'nina'")[0] == (0, None)

    stolen = open_session("nina")
    at.button(key="user_reset").click().run()
    new_password = at.code[0].value
    # nina's sessions end with her old password; the admin's own goes on.
    assert app_env.scalar("SELECT revoked_at FROM app_sessions WHERE username = 'nina'") is not None, stolen
    assert app_env.scalar("SELECT count(*) FROM app_sessions WHERE username = :u AND revoked_at IS NULL",
                          u=USERS["admin"]) == 1
    with app_env.engine.begin() as conn:
        assert auth.authenticate(conn, "nina", new_password).ok
        assert not auth.authenticate(conn, "nina", password).ok

    at.button(key="user_delete").click().run()
    assert "Delete the user nina?" in at.warning[-1].value
    at.button(key="delete_user_yes").click().run()
    assert app_env.scalar("SELECT count(*) FROM app_users WHERE username = 'nina'") == 0
    assert [a.actor for a in app_env.audit("user.delete")] == [USERS["admin"]]


def test_bad_user_changes_are_refused_with_a_reason(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    at = open_page("users")
    at.text_input(key="user_add_name").input("bad name!")
    at.form_submit_button[0].click()
    at.run()
    assert "user name" in at.error[0].value
    at.text_input(key="user_add_name").input("vera")
    at.form_submit_button[0].click()
    at.run()
    assert "already exists" in at.error[0].value
    at.selectbox(key="user_target").set_value("ada")
    at.run()
    assert at.button(key="user_delete").disabled  # yourself
    at.selectbox(key="user_role_ada").set_value("viewer")
    at.run()
    at.button(key="user_save_role").click().run()
    assert "last admin" in at.error[0].value
    assert app_env.scalar("SELECT role FROM app_users WHERE username = 'ada'") == "admin"
