"""Who is logged in, for how long, and what they may do.

The login itself is app/auth_routes.py's HTTP form, which sets an HttpOnly session
cookie; here every script run reads that cookie (st.context.cookies) and asks
core.auth.session_user whether its session is live, so a session ended, expired or
idle too long is refused at the next click, and the role is the account's current
one (a demoted or deleted user loses access at their next click, not their next
login). A run without a cookie may carry the raw session id in st.session_state
(SESSION_KEY): that is how AppTest and other in-process callers log in, through the
same database check.

Every page calls `require_role()` first, even though app/main.py only shows the
login page to anonymous sessions: a page file run on its own (AppTest, a future
entry point) must not render anything without a user.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.runtime.pages_manager import PagesManager

from app.auth_routes import COOKIE, LOGOUT_PATH, end_and_audit, login_url, safe_next
from app.context import get_engine, get_settings
from core.auth import role_at_least, session_user
from core.states import Role

log = logging.getLogger("hub.app.auth")

USER_KEY = "user"
SESSION_KEY = "_session_id"  # the raw session id of a run without the cookie (AppTest)
USER_SESSION_KEY = "_user_session"  # the session id USER_KEY was verified with
CHECKED_KEY = "_user_checked_at"
TOUCHED_KEY = "_user_touched_at"  # the last check that counted as the user's activity
MESSAGE_KEY = "login_message"
REDIRECT_KEY = "_login_redirect"  # where the login page sends the browser (after a logout: /logout)
# Within one script run main.py and the page both ask for the user; one database
# check per this many seconds is enough (a check that counts as activity is reused only
# by another such check: a click just after a timed refresh still counts).
_RECHECK_S = 2.0
REASON_UNAVAILABLE = "The database cannot be reached, so your login cannot be checked. Try again shortly."


def use_navigation_mode() -> bool:
    """Make Streamlit run app/main.py (and so the login gate) on every later rerun.

    A `pages/` folder next to the main script makes Streamlit 1.67 start in its old
    folder-based mode, in which a page file runs *instead of* main.py. st.navigation
    switches that off for the process once main.py has called it, but the very first
    run of a process may be a page URL, which would then run without main.py (no
    login form, no sidebar). Every page therefore switches it off too; True means this
    run was such a folder-mode run (require_role then restarts it through main.py).
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        return True
    return False


def session_id() -> str | None:
    """The raw id of this browser's session: the cookie, else SESSION_KEY (runs without a browser)."""
    try:
        cookie = st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no client context (scripts)
        cookie = None
    if isinstance(cookie, str) and cookie:  # (AppTest's client context is a mock, not a str)
        return cookie
    raw = st.session_state.get(SESSION_KEY)
    return raw if isinstance(raw, str) and raw else None


def requested_url() -> str:
    """The page and query the browser is on, for returning there after a new login."""
    path = "/"
    try:
        url = st.context.url
    except Exception:  # noqa: BLE001 - no client context
        url = None
    if isinstance(url, str) and url:
        path = urlsplit(url).path or "/"
    query = urlencode(st.query_params.to_dict())
    return safe_next(path + ("?" + query if query else ""))


def forget(message: str | None = None, redirect: str | None = None) -> None:
    """Forget everything this browser session kept (user, filters, selections)."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if message:
        st.session_state[MESSAGE_KEY] = message
    if redirect:
        st.session_state[REDIRECT_KEY] = redirect


def logout(message: str | None = None) -> None:
    """End the session in the database (audited), then forget it; the login page then sends
    the browser to /logout, which clears the cookie."""
    raw = session_id()
    if raw:
        try:
            end_and_audit(raw)
        except SQLAlchemyError as exc:
            log.warning("logout: database error %s", type(exc).__name__)
    forget(message, redirect=LOGOUT_PATH)


def current_user(*, touch: bool = True) -> dict[str, Any] | None:
    """The logged-in user, or None (no session, or it ended: logout, expiry, idle, account gone).

    `touch=False` checks without counting as the user's activity (a page refreshing itself).
    """
    raw = session_id()
    user = st.session_state.get(USER_KEY)
    if not raw or st.session_state.get(REDIRECT_KEY):  # no session, or it ended and the browser is leaving
        st.session_state.pop(USER_KEY, None)
        return None
    verified = user if isinstance(user, dict) and st.session_state.get(USER_SESSION_KEY) == raw else None
    now = time.time()
    last_check = st.session_state.get(TOUCHED_KEY if touch else CHECKED_KEY, 0.0)
    if verified is not None and now - last_check <= _RECHECK_S:
        return dict(verified)
    settings = get_settings()
    try:
        with get_engine().begin() as conn:
            account = session_user(conn, raw, idle_timeout_s=settings.app_idle_timeout, touch=touch)
    except SQLAlchemyError:
        if verified is not None:
            # The database is down: keep the user verified a moment ago, so that the
            # Overview can still say that the database is down.
            return dict(verified)
        forget(REASON_UNAVAILABLE)
        return None
    if account is None:
        forget(f"Your session has ended: you logged out, it was idle for more than "
               f"{settings.app_idle_timeout // 60} min, or it reached its "
               f"{settings.app_session_ttl // 3600} h limit. Please log in again.",
               redirect=login_url(requested_url(), "expired"))
        return None
    user = {"username": account.username, "role": account.role}
    st.session_state[USER_KEY] = user
    st.session_state[USER_SESSION_KEY] = raw
    st.session_state[CHECKED_KEY] = now
    if touch:
        st.session_state[TOUCHED_KEY] = now
    return dict(user)


def session_alive(*, touch: bool = False) -> bool:
    """For a fragment running again: the session is still live (counted as the user's activity
    only with `touch`). When it is not, the whole app runs again, which shows the login page."""
    if current_user(touch=touch) is None:
        st.rerun(scope="app")
    return True


def can(minimum: str) -> bool:
    """Whether the current user has at least the role `minimum` (for enabling buttons)."""
    user = st.session_state.get(USER_KEY)
    if not user:
        return False
    return role_at_least(user.get("role"), minimum)


def require_role(minimum: str = Role.VIEWER) -> dict[str, Any]:
    """Return the user when their role is at least `minimum`; otherwise explain and stop."""
    if use_navigation_mode():
        st.rerun()  # run again through app/main.py: its login check, navigation and sidebar
    user = current_user()
    if user is None:
        st.info("Please log in to use the routing hub.")
        st.stop()
    if not role_at_least(user["role"], minimum):
        st.error(f"This page needs the {minimum} role; you are logged in as {user['role']}.")
        st.stop()
    return user


def needs(minimum: str) -> str | None:
    """Help text for a control the current user may not use (None when they may)."""
    return None if can(minimum) else f"Needs the {minimum} role."
