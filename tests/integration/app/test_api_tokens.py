"""The admins' API tokens page: a token is shown once, listed, revoked, and every change audited."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from core import auth
from tests.integration.app.conftest import (
    MAIN,
    USERS,
    AppEnv,
    assert_clean,
    frame_text,
    new_app,
    open_session,
    table_rows,
)

pytestmark = pytest.mark.integration


def _create(at: AppTest, name: str, role: str, expiry: int = 365) -> None:
    at.text_input(key="token_add_name").input(name)
    at.selectbox(key="token_add_role").set_value(role)
    at.selectbox(key="token_add_expiry").set_value(expiry)
    at.form_submit_button[0].click()
    at.run()
    assert_clean(at)


def test_admin_creates_lists_and_revokes_tokens(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    at = open_page("api_tokens")
    assert "No API tokens yet." in frame_text(at)
    _create(at, "ris-integration", "operator")
    raw = at.code[0].value
    assert raw.startswith(auth.TOKEN_PREFIX)
    with app_env.engine.begin() as conn:
        check = auth.verify_token(conn, raw)
    assert check.token is not None and (check.token.name, check.token.role) == ("ris-integration", "operator")
    assert check.token.created_by == USERS["admin"] and check.token.expires_at is not None
    [created] = app_env.audit("token.create")
    assert (created.actor, created.source, created.target, created.after["role"]) == (
        USERS["admin"], "ui", "token:ris-integration", "operator")
    assert raw not in str(app_env.sql("SELECT * FROM audit_log")) and raw not in str(
        app_env.sql("SELECT * FROM api_tokens"))
    at.run()
    assert not at.code, "a token is shown once only"
    rows = table_rows(at, "Last used")
    assert [(r["Name"], r["Role"], r["State"]) for r in rows] == [("ris-integration", "operator", "active")]

    _create(at, "ris-integration", "viewer")
    assert "already exists" in at.error[0].value and not at.code
    _create(at, "bad name!", "viewer")
    assert "token name" in at.error[0].value
    _create(at, "dashboards", "viewer", expiry=0)
    assert at.code and app_env.scalar("SELECT expires_at FROM api_tokens WHERE name = 'dashboards'") is None

    at.run()
    at.selectbox(key="token_target").set_value("ris-integration")
    at.button(key="token_revoke").click().run()
    assert "Revoke the token ris-integration?" in at.warning[-1].value
    at.button(key="revoke_token_yes").click().run()
    assert_clean(at)
    with app_env.engine.begin() as conn:
        refused = auth.verify_token(conn, raw)
    assert not refused.ok and "revoked" in refused.problem
    [revoked] = app_env.audit("token.revoke")
    assert (revoked.actor, revoked.source, revoked.target) == (USERS["admin"], "ui", "token:ris-integration")
    states = {r["Name"]: r["State"] for r in table_rows(at, "Last used")}
    assert states == {"dashboards": "active", "ris-integration": "revoked"}
    assert at.selectbox(key="token_target").options == ["dashboards"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_admins_see_the_tokens_page(app_env: AppEnv, role: str) -> None:
    with app_env.engine.begin() as conn:
        auth.create_token(conn, "secret-name", "admin", actor="test", source="setup")
    at = new_app(role).run()
    with pytest.raises(ValueError):  # not even registered in the navigation
        at.switch_page("pages/api_tokens.py")
    page = AppTest.from_file(str(MAIN.parent / "pages" / "api_tokens.py"), default_timeout=60)
    page.session_state["_session_id"] = open_session(USERS[role])
    page.run()
    assert "needs the admin role" in page.error[0].value
    assert not page.dataframe and "secret-name" not in frame_text(page)
