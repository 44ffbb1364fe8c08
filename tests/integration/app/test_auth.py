"""Login, lockout, sessions, roles, and the first admin (core.auth, app/auth_routes.py, app/main.py).

The login form and the cookie are app/auth_routes.py's HTTP routes, driven here with
Starlette's test client (the same routes and gate app/server.py mounts beside
Streamlit); what a session then sees is app/main.py under AppTest, carrying the raw
session id the route put in the cookie.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from streamlit.testing.v1 import AppTest

from app import auth_routes
from core import auth
from tests.integration.app.conftest import (
    MAIN,
    PASSWORDS,
    USERS,
    AppEnv,
    assert_clean,
    new_app,
    open_session,
    recheck_due,
)

pytestmark = pytest.mark.integration


async def _page(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"the app at {request.url.path}")


@pytest.fixture
def client(app_env: AppEnv) -> Iterator[TestClient]:
    """The login routes and the session gate as app/server.py mounts them, over a stand-in page."""
    web = Starlette(routes=[*auth_routes.routes(), Route("/{path:path}", _page)],
                    middleware=[Middleware(auth_routes.SessionGate)])
    with TestClient(web, follow_redirects=False) as test_client:
        yield test_client


def login(client: TestClient, username: str, password: str, next_url: str = "/") -> httpx.Response:
    """GET the form (its CSRF token), then POST it, as a browser does."""
    form = client.get("/login", params={"next": next_url})
    assert form.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token
    return client.post("/login", data={"username": username, "password": password, "next": next_url,
                                       "csrf": token.group(1)})


def session_app(raw: str) -> AppTest:
    """The app as a browser holding this session cookie sees it."""
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.session_state["_session_id"] = raw
    return at


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


def test_login_form_sets_the_session_cookie_and_returns_to_the_page(app_env: AppEnv, client: TestClient) -> None:
    # A page asked for without a session: the login form, remembering the page and its query.
    asked = client.get("/study_detail", params={"study": "14"}, headers={"accept": "text/html"})
    assert asked.status_code == 303 and asked.headers["location"] == "/login?next=%2Fstudy_detail%3Fstudy%3D14"
    response = login(client, "oscar", PASSWORDS["oscar"], "/study_detail?study=14")
    assert response.status_code == 303 and response.headers["location"] == "/study_detail?study=14"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("hub_session="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes and "secure" not in attributes
    assert "samesite=strict" in cookie.lower()
    assert f"max-age={app_env.settings.app_session_ttl}" in cookie.lower()
    raw = cookie.split(";")[0].split("=", 1)[1]
    # The database keeps only the id's SHA-256.
    [row] = app_env.sql("SELECT id_hash, username FROM app_sessions")
    assert row.username == "oscar" and row.id_hash == hashlib.sha256(raw.encode()).hexdigest() != raw
    assert [r.actor for r in app_env.audit("auth.login")] == ["oscar"]
    assert app_env.scalar("SELECT last_login_at FROM app_users WHERE username = 'oscar'") is not None
    # The page now opens (the gate lets it through), and the app knows the user.
    assert client.get("/study_detail?study=14", headers={"accept": "text/html"}).status_code == 200
    at = session_app(raw).run()
    assert_clean(at)
    assert at.session_state["user"] == {"username": "oscar", "role": "operator"}
    assert at.title[0].value == "Overview"


def test_a_new_login_replaces_the_session_the_browser_held(app_env: AppEnv, client: TestClient) -> None:
    first = login(client, "vera", PASSWORDS["vera"])
    client.cookies.set("hub_session", first.cookies["hub_session"])
    second = login(client, "ada", PASSWORDS["ada"])
    assert second.cookies["hub_session"] != first.cookies["hub_session"]
    ended = dict(app_env.sql("SELECT username, revoked_at IS NOT NULL FROM app_sessions"))
    assert ended == {"vera": True, "ada": False}


def test_the_cookie_is_secure_over_https(app_env: AppEnv) -> None:
    web = Starlette(routes=auth_routes.routes())
    with TestClient(web, base_url="https://hub.example", follow_redirects=False) as secure_client:
        response = login(secure_client, "vera", PASSWORDS["vera"])
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("hub_session="))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_a_login_posted_from_elsewhere_is_refused(app_env: AppEnv, client: TestClient) -> None:
    """Without the form's token (a cross-site post carries no SameSite=Strict cookie), nothing happens."""
    response = client.post("/login", data={"username": "ada", "password": PASSWORDS["ada"], "csrf": "forged"})
    assert response.status_code == 400 and "hub_session" not in response.headers.get("set-cookie", "")
    assert app_env.scalar("SELECT count(*) FROM app_sessions") == 0
    assert app_env.audit("auth.login") == []


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/x", "/\\evil.example", "/login?next=/", "/logout", "javascript:alert(1)",
    "/ok\r\nSet-Cookie: x=1", "",
])
def test_login_never_sends_the_browser_elsewhere(target: str) -> None:
    assert auth_routes.safe_next(target) == "/"
    assert auth_routes.safe_next("/study_detail?study=14") == "/study_detail?study=14"


def test_wrong_password_is_counted_audited_and_locks_out(app_env: AppEnv, client: TestClient) -> None:
    for _attempt in range(1, auth.LOCKOUT_THRESHOLD + 1):
        response = login(client, "vera", "not-the-password")
        assert response.status_code == 200 and "hub_session=" not in response.headers.get("set-cookie", "")
        assert 'role="alert"' in response.text, "a failed login must say so"
    assert "locked" in response.text
    row = app_env.sql("SELECT failed_logins, locked_until FROM app_users WHERE username = 'vera'")[0]
    assert row.failed_logins == auth.LOCKOUT_THRESHOLD
    assert row.locked_until > datetime.now(UTC) + timedelta(seconds=auth.LOCKOUT_BASE_S - 5)
    # The right password is refused while locked.
    response = login(client, "vera", PASSWORDS["vera"])
    assert "locked" in response.text and app_env.scalar("SELECT count(*) FROM app_sessions") == 0
    failures = app_env.audit("auth.login_failed")
    assert len(failures) == auth.LOCKOUT_THRESHOLD + 1
    assert failures[-1].after["reason"] == "locked"
    # An admin unlocks the account, then the login works.
    with app_env.engine.begin() as conn:
        auth.unlock_user(conn, "vera", actor="ada", source="ui")
    assert login(client, "vera", PASSWORDS["vera"]).status_code == 303


def test_unknown_user_is_refused_without_recording_what_was_typed(app_env: AppEnv, client: TestClient) -> None:
    response = login(client, "s3cret-typed-in-the-name-field", "whatever-password")
    assert "Wrong user name or password." in response.text
    failure = app_env.audit("auth.login_failed")[0]
    assert failure.actor == "anonymous" and failure.target is None
    dump = str(app_env.sql("SELECT * FROM audit_log"))
    assert "s3cret" not in dump


def test_sessions_end_by_expiry_idleness_logout_deletion_and_lockout(app_env: AppEnv) -> None:
    now = datetime.now(UTC)
    idle = app_env.settings.app_idle_timeout
    with app_env.engine.begin() as conn:
        live = auth.start_session(conn, "vera", ttl_s=3600, now=now)
        expired = auth.start_session(conn, "vera", ttl_s=60, now=now - timedelta(seconds=61))
        assert auth.session_user(conn, live, idle_timeout_s=idle, now=now).username == "vera"
        assert auth.session_user(conn, expired, idle_timeout_s=idle, now=now) is None
        assert auth.session_user(conn, "not-a-session", idle_timeout_s=idle) is None
        assert auth.session_user(conn, "x" * 500, idle_timeout_s=idle) is None
        # A check that is not the user's activity leaves the idle clock alone.
        later = now + timedelta(seconds=idle - 1)
        assert auth.session_user(conn, live, idle_timeout_s=idle, touch=False, now=later) is not None
        assert auth.session_user(conn, live, idle_timeout_s=idle, now=now + timedelta(seconds=idle + 1)) is None
        # Activity moves it.
        fresh = auth.start_session(conn, "oscar", ttl_s=3600, now=now)
        assert auth.session_user(conn, fresh, idle_timeout_s=idle, now=later) is not None
        assert auth.session_user(conn, fresh, idle_timeout_s=idle, now=later + timedelta(seconds=idle - 1))
        # Logout ends it once.
        assert auth.end_session(conn, fresh) == "oscar" and auth.end_session(conn, fresh) is None
        assert auth.session_user(conn, fresh, idle_timeout_s=idle) is None
        # A locked account's sessions are refused; a deleted account's are gone.
        ada = auth.start_session(conn, "ada", ttl_s=3600)
        conn.execute(text("UPDATE app_users SET locked_until = now() + interval '1 minute' WHERE username = 'ada'"))
        assert auth.session_user(conn, ada, idle_timeout_s=idle) is None
        auth.delete_user(conn, "vera", actor="ada", source="ui")
    assert app_env.scalar("SELECT count(*) FROM app_sessions WHERE username = 'vera'") == 0
    assert all(len(h) == 64 for (h,) in app_env.sql("SELECT id_hash FROM app_sessions"))


def test_the_gate_refuses_an_ended_session_and_lets_assets_through(app_env: AppEnv, client: TestClient) -> None:
    raw = open_session("vera")
    html = {"accept": "text/html"}
    client.cookies.set("hub_session", raw)
    assert client.get("/queue", headers=html).status_code == 200
    with app_env.engine.begin() as conn:
        auth.end_session(conn, raw)
    refused = client.get("/queue", headers=html)
    assert refused.status_code == 303
    assert refused.headers["location"] == "/login?next=%2Fqueue&reason=expired"
    assert 'hub_session=""' in refused.headers["set-cookie"] and "max-age=0" in refused.headers["set-cookie"].lower()
    # Only page loads are gated: Streamlit's API and assets, and anything not asking for HTML, pass.
    assert client.get("/_stcore/health", headers=html).status_code == 200
    assert client.get("/static/js/index.js").status_code == 200
    assert "Your session has ended" in client.get("/login?reason=expired").text


def test_session_times_out_after_idle_minutes(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_routes, "_mounted", True)
    at = new_app("admin").run()
    assert at.title[0].value == "Overview"
    app_env.sql_exec("UPDATE app_sessions SET last_seen_at = now() - make_interval(secs => :s)",
                     s=app_env.settings.app_idle_timeout + 5)
    recheck_due(at)
    at.query_params["study"] = "14"
    at.run()
    assert "user" not in at.session_state
    assert at.title[0].value == "Routing hub"
    assert "Your session has ended" in at.info[0].value
    # The browser is sent to the login form, which brings it back to where it was.
    target = "/login?next=%2F%3Fstudy%3D14&reason=expired"
    assert at.session_state["_login_redirect"] == target  # where the browser is sent (and a link to it)
    assert f"[Log in]({target})" in [m.value for m in at.markdown]


def _check_session() -> None:
    """An AppTest script: one session check, counted as activity when session_state["touch"]."""
    import streamlit as st

    from app.components.access import current_user

    st.write(current_user(touch=bool(st.session_state.get("touch"))))


def test_a_click_just_after_a_timed_refresh_counts_as_activity(app_env: AppEnv) -> None:
    at = AppTest.from_function(_check_session, default_timeout=30)
    at.session_state["_session_id"] = open_session("vera")
    back = "UPDATE app_sessions SET last_seen_at = now() - interval '10 minutes'"
    app_env.sql_exec(back)
    at.run()  # a refresh the timer started: checked, not activity
    assert app_env.scalar("SELECT now() - max(last_seen_at) > interval '9 minutes' FROM app_sessions")
    at.session_state["touch"] = True  # the user clicks within the 2 s the refresh's check is reused
    at.run()
    assert app_env.scalar("SELECT now() - max(last_seen_at) < interval '1 minute' FROM app_sessions")
    # Another activity within 2 s reuses that check; a refresh after it reuses it too.
    app_env.sql_exec(back)
    at.run()
    at.session_state["touch"] = False
    at.run()
    assert app_env.scalar("SELECT now() - max(last_seen_at) > interval '9 minutes' FROM app_sessions")
    assert not at.exception


def test_role_change_and_deletion_apply_at_the_next_click(app_env: AppEnv) -> None:
    at = new_app("operator").run()
    with app_env.engine.begin() as conn:
        auth.set_role(conn, "oscar", "viewer", actor="ada", source="ui")
    recheck_due(at)
    at.run()
    assert at.session_state["user"]["role"] == "viewer"
    with app_env.engine.begin() as conn:
        auth.delete_user(conn, "oscar", actor="ada", source="ui")
    recheck_due(at)
    at.run()
    assert "user" not in at.session_state and at.title[0].value == "Routing hub"


def test_navigation_and_pages_follow_the_role(app_env: AppEnv) -> None:
    at = new_app("viewer").run()
    with pytest.raises(ValueError):  # Users is not even registered for a viewer
        at.switch_page("pages/users.py")
    # Run directly, the page refuses by itself.
    page = AppTest.from_file(str(MAIN.parent / "pages" / "users.py"), default_timeout=60)
    page.session_state["_session_id"] = open_session(USERS["viewer"])
    page.run()
    assert "needs the admin role" in page.error[0].value
    assert not page.dataframe
    anonymous = AppTest.from_file(str(MAIN.parent / "pages" / "overview.py")).run()
    assert "log in" in anonymous.info[0].value and not anonymous.metric


def test_logout_button_ends_the_session(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_routes, "_mounted", True)
    at = new_app("admin").run()
    raw = at.session_state["_session_id"]
    at.button(key="logout_button").click().run()
    assert "user" not in at.session_state
    assert at.title[0].value == "Routing hub" and at.info[0].value == "You have logged out."
    # Ended in the database (a copy of the cookie opens nothing), audited once, and the
    # browser goes to /logout, which clears the cookie.
    with app_env.engine.connect() as conn:
        assert auth.session_user(conn, raw, idle_timeout_s=3600) is None
    assert [(r.actor, r.target) for r in app_env.audit("auth.logout")] == [("ada", "user:ada")]
    assert at.session_state["_login_redirect"] == "/logout" and "[Continue](/logout)" in [m.value for m in at.markdown]
    assert session_app(raw).run().title[0].value == "Routing hub"


def test_logout_route_ends_the_session_and_clears_the_cookie(app_env: AppEnv, client: TestClient) -> None:
    raw = open_session("oscar")
    client.cookies.set("hub_session", raw)
    response = client.get("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login?reason=logged_out"
    assert 'hub_session=""' in response.headers["set-cookie"]
    assert app_env.scalar("SELECT revoked_at FROM app_sessions") is not None
    assert len(app_env.audit("auth.logout")) == 1


def test_password_rules(app_env: AppEnv) -> None:
    with pytest.raises(auth.UserError, match="at least"):
        auth.hash_password("short")
    with pytest.raises(auth.UserError, match="at most"):
        auth.hash_password("é" * 40)
    assert not auth.verify_password("x" * 100, auth.hash_password("a-long-password", rounds=4))
    with app_env.engine.begin() as conn, pytest.raises(auth.UserError, match="last admin"):
        auth.set_role(conn, "ada", "viewer", actor="ada", source="ui")


def test_a_password_change_ends_the_users_other_sessions(app_env: AppEnv, client: TestClient) -> None:
    """A changed or reset password logs out every session opened with the old one (a stolen
    cookie included), except the caller's own; other users' sessions are untouched."""
    idle = app_env.settings.app_idle_timeout
    stolen, own, other = open_session("vera"), open_session("vera"), open_session("oscar")
    with app_env.engine.begin() as conn:
        ended = auth.set_password(conn, "vera", "a-new-password-1", actor="vera", source="ui", keep_session=own,
                                  rounds=4)
        assert ended == 1
        assert auth.session_user(conn, stolen, idle_timeout_s=idle) is None
        assert auth.session_user(conn, own, idle_timeout_s=idle).username == "vera"
        assert auth.session_user(conn, other, idle_timeout_s=idle).username == "oscar"
    # The gate refuses the stolen cookie at once.
    client.cookies.set(auth.SESSION_COOKIE, stolen)
    refused = client.get("/queue", headers={"accept": "text/html"})
    assert refused.status_code == 303 and refused.headers["location"] == "/login?next=%2Fqueue&reason=expired"
    # An admin's reset keeps none of the user's sessions (another user's id is never kept).
    with app_env.engine.begin() as conn:
        assert auth.set_password(conn, "vera", "a-newer-password", actor="ada", source="ui", keep_session=other,
                                 rounds=4) == 1
        assert auth.session_user(conn, own, idle_timeout_s=idle) is None
        assert auth.session_user(conn, other, idle_timeout_s=idle) is not None
    assert [a.after for a in app_env.audit("user.password")] == [{"sessions_ended": 1}, {"sessions_ended": 1}]
