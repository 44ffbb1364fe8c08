"""The login form: the only thing an anonymous session can see.

Failed attempts are counted and audited by core.auth.authenticate inside a committed
transaction, so the lockout holds across sessions and browsers.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components.access import MESSAGE_KEY, login
from app.components.db import show_error, writing
from core.auth import authenticate
from core.states import AuditSource


def login_page() -> None:
    st.title("Routing hub")
    st.caption("Log in to the operations app.")
    message = st.session_state.get(MESSAGE_KEY)
    if message:
        st.info(message)
    with st.form("login_form"):
        username = st.text_input("User name", key="login_username", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return
    if not username or not password:
        st.error("Enter your user name and password.")
        return
    try:
        with writing() as conn:
            result = authenticate(conn, username.strip(), password, source=AuditSource.UI)
    except SQLAlchemyError as exc:
        show_error("Login is unavailable", exc)
        return
    if result.user is None:
        st.error(result.message)
        return
    login(result.user.username, result.user.role)
    st.rerun()
