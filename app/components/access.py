"""Who is logged in, for how long, and what they may do.

Every page calls `require_role()` first, even though app/main.py only shows the
login form to anonymous sessions: a page file run on its own (AppTest, a future
entry point) must not render anything without a user. The role is re-read from
the database on each interaction, so a demoted or deleted user loses access at
their next click rather than at their next login.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.runtime.pages_manager import PagesManager

from app.context import get_engine, get_settings
from core.auth import get_user, role_at_least
from core.states import Role

USER_KEY = "user"
ACTIVITY_KEY = "last_activity"
CHECKED_KEY = "_user_checked_at"
MESSAGE_KEY = "login_message"
# Within one script run main.py and the page both ask for the user; one database
# check per this many seconds is enough.
_RECHECK_S = 2.0


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


def login(username: str, role: str) -> None:
    """Start a session for a user whose password was just verified."""
    now = time.time()
    st.session_state[USER_KEY] = {"username": username, "role": role}
    st.session_state[ACTIVITY_KEY] = now
    st.session_state[CHECKED_KEY] = now
    st.session_state.pop(MESSAGE_KEY, None)


def logout(message: str | None = None) -> None:
    """End the session and forget everything the pages kept in it."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if message:
        st.session_state[MESSAGE_KEY] = message


def current_user() -> dict[str, Any] | None:
    """The logged-in user, or None (after an idle timeout or when the account is gone)."""
    user = st.session_state.get(USER_KEY)
    if not user:
        return None
    now = time.time()
    timeout_s = get_settings().app_session_timeout_min * 60
    last = st.session_state.get(ACTIVITY_KEY, now)
    if now - last > timeout_s:
        logout(f"Your session ended after {timeout_s // 60} minutes without activity. Please log in again.")
        return None
    st.session_state[ACTIVITY_KEY] = now
    if now - st.session_state.get(CHECKED_KEY, 0.0) > _RECHECK_S:
        try:
            with get_engine().connect() as conn:
                account = get_user(conn, user["username"])
        except SQLAlchemyError:
            # The database is down: keep the role verified at login, so that the
            # Overview can still say that the database is down.
            return dict(user)
        if account is None:
            logout("Your account no longer exists. Ask an admin.")
            return None
        if account.role != user["role"]:
            user = {"username": account.username, "role": account.role}
            st.session_state[USER_KEY] = user
        st.session_state[CHECKED_KEY] = now
    return dict(user)


def can(minimum: str) -> bool:
    """Whether the current user has at least the role `minimum` (for enabling buttons)."""
    user = st.session_state.get(USER_KEY)
    if not user:
        return False
    return role_at_least(user.get("role"), minimum)


def require_role(minimum: str = Role.VIEWER) -> dict[str, Any]:
    """Return the user when their role is at least `minimum`; otherwise explain and stop."""
    folder_mode_run = use_navigation_mode()
    user = current_user()
    if user is None:
        if folder_mode_run:
            st.rerun()  # run again through app/main.py, which shows the login form
        st.info("Please log in to use the routing hub.")
        st.stop()
    if not role_at_least(user["role"], minimum):
        st.error(f"This page needs the {minimum} role; you are logged in as {user['role']}.")
        st.stop()
    return user


def needs(minimum: str) -> str | None:
    """Help text for a control the current user may not use (None when they may)."""
    return None if can(minimum) else f"Needs the {minimum} role."
