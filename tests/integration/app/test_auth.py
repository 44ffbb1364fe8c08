"""Login, lockout, session timeout, roles, and the first admin (core.auth + app/main.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core import auth
from tests.integration.app.conftest import MAIN, PASSWORDS, USERS, AppEnv, assert_clean, new_app

pytestmark = pytest.mark.integration


def login(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(password)
    at.form_submit_button[0].click()
    return at.run()


def test_ensure_admin_creates_the_first_admin_once(app_env: AppEnv) -> None:
    settings = app_env.settings
    with app_env.engine.begin() as conn:
        assert auth.ensure_admin(conn, settings) is True
        assert auth.ensure_admin(conn, settings) is False
        user = auth.get_user(conn, settings.app_admin_username)
    assert user is not None and user.role == "admin"
    stored = app_env.scalar("SELECT password_hash FROM app_users WHERE username = :u", u=user.username)
    assert stored.startswith("$2b$") and settings.app_admin_password.get_secret_value() not in stored
    assert auth.verify_password(settings.app_admin_password.get_secret_value(), stored)
    created = app_env.audit("user.create")
    assert [(r.actor, r.source, r.target) for r in created if r.target == f"user:{user.username}"] == [
        ("setup", "setup", f"user:{user.username}")]


def test_login_form_logs_in_and_audits(app_env: AppEnv) -> None:
    at = new_app().run()
    assert_clean(at)
    assert at.title[0].value == "Routing hub"
    assert not at.get("metric")  # nothing but the form for an anonymous session
    login(at, "oscar", PASSWORDS["oscar"])
    assert_clean(at)
    assert at.session_state["user"] == {"username": "oscar", "role": "operator"}
    assert at.title[0].value == "Overview"
    assert [r.actor for r in app_env.audit("auth.login")] == ["oscar"]
    assert app_env.scalar("SELECT last_login_at FROM app_users WHERE username = 'oscar'") is not None


def test_wrong_password_is_counted_audited_and_locks_out(app_env: AppEnv) -> None:
    at = new_app().run()
    for _attempt in range(1, auth.LOCKOUT_THRESHOLD + 1):
        login(at, "vera", "not-the-password")
        assert "user" not in at.session_state
        assert at.error, "a failed login must say so"
    assert "locked" in at.error[0].value
    row = app_env.sql("SELECT failed_logins, locked_until FROM app_users WHERE username = 'vera'")[0]
    assert row.failed_logins == auth.LOCKOUT_THRESHOLD
    assert row.locked_until > datetime.now(UTC) + timedelta(seconds=auth.LOCKOUT_BASE_S - 5)
    # The right password is refused while locked.
    login(at, "vera", PASSWORDS["vera"])
    assert "user" not in at.session_state and "locked" in at.error[0].value
    failures = app_env.audit("auth.login_failed")
    assert len(failures) == auth.LOCKOUT_THRESHOLD + 1
    assert failures[-1].after["reason"] == "locked"
    # An admin unlocks the account, then the login works.
    with app_env.engine.begin() as conn:
        auth.unlock_user(conn, "vera", actor="ada", source="ui")
    login(at, "vera", PASSWORDS["vera"])
    assert at.session_state["user"]["role"] == "viewer"


def test_unknown_user_is_refused_without_recording_what_was_typed(app_env: AppEnv) -> None:
    at = new_app().run()
    login(at, "s3cret-typed-in-the-name-field", "whatever-password")
    assert "user" not in at.session_state
    assert at.error[0].value == "Wrong user name or password."
    failure = app_env.audit("auth.login_failed")[0]
    assert failure.actor == "anonymous" and failure.target is None
    dump = str(app_env.sql("SELECT * FROM audit_log"))
    assert "s3cret" not in dump


def test_session_times_out_after_idle_minutes(app_env: AppEnv) -> None:
    at = new_app("admin").run()
    assert at.title[0].value == "Overview"
    at.session_state["last_activity"] = time.time() - app_env.settings.app_session_timeout_min * 60 - 5
    at.run()
    assert "user" not in at.session_state
    assert at.title[0].value == "Routing hub"
    assert "without activity" in at.info[0].value


def test_role_change_and_deletion_apply_at_the_next_click(app_env: AppEnv) -> None:
    at = new_app("operator").run()
    with app_env.engine.begin() as conn:
        auth.set_role(conn, "oscar", "viewer", actor="ada", source="ui")
    at.session_state["_user_checked_at"] = 0.0
    at.run()
    assert at.session_state["user"]["role"] == "viewer"
    with app_env.engine.begin() as conn:
        auth.delete_user(conn, "oscar", actor="ada", source="ui")
    at.session_state["_user_checked_at"] = 0.0
    at.run()
    assert "user" not in at.session_state and at.title[0].value == "Routing hub"


def test_navigation_and_pages_follow_the_role(app_env: AppEnv) -> None:
    at = new_app("viewer").run()
    with pytest.raises(ValueError):  # Users is not even registered for a viewer
        at.switch_page("pages/users.py")
    # Run directly, the page refuses by itself.
    page = AppTest.from_file(str(MAIN.parent / "pages" / "users.py"), default_timeout=60)
    page.session_state["user"] = {"username": USERS["viewer"], "role": "viewer"}
    page.session_state["last_activity"] = time.time()
    page.run()
    assert "needs the admin role" in page.error[0].value
    assert not page.dataframe
    anonymous = AppTest.from_file(str(MAIN.parent / "pages" / "overview.py")).run()
    assert "log in" in anonymous.info[0].value and not anonymous.metric


def test_logout_button_ends_the_session(app_env: AppEnv) -> None:
    at = new_app("admin").run()
    at.button(key="logout_button").click().run()
    assert "user" not in at.session_state
    assert at.title[0].value == "Routing hub"


def test_password_rules(app_env: AppEnv) -> None:
    with pytest.raises(auth.UserError, match="at least"):
        auth.hash_password("short")
    with pytest.raises(auth.UserError, match="at most"):
        auth.hash_password("é" * 40)
    assert not auth.verify_password("x" * 100, auth.hash_password("a-long-password", rounds=4))
    with app_env.engine.begin() as conn, pytest.raises(auth.UserError, match="last admin"):
        auth.set_role(conn, "ada", "viewer", actor="ada", source="ui")
