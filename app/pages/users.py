"""Users (admins only): create accounts, change roles, reset passwords, unlock, delete.

New and reset passwords are generated here and shown once, so no admin ever has to
invent (or reuse) one; they are not stored anywhere but as a bcrypt hash. The rules
that protect the last admin live in core.auth, shared with the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from app.components import confirm
from app.components.access import require_role, session_id
from app.components.db import reading, show_error, writing
from app.components.fmt import table
from app.context import get_settings
from core import auth
from core.states import AuditSource, Role

FLASH_KEY = "users_flash"
SECRET_KEY = "users_new_password"


def _flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    secret = st.session_state.pop(SECRET_KEY, None)
    if secret:
        st.warning(f"Password for **{secret[0]}** (shown once; hand it over securely):")
        st.code(secret[1], language=None)


def _run(label: str, action: Callable[..., Any], *args: Any, secret_for: str | None = None,
         password: str | None = None, **kwargs: Any) -> None:
    try:
        with writing() as conn:
            action(conn, *args, **kwargs)
    except auth.UserError as exc:
        st.session_state[FLASH_KEY] = ("error", f"{label}: {exc}")
    except SQLAlchemyError as exc:
        show_error(label, exc)
        return
    else:
        st.session_state[FLASH_KEY] = ("success", f"{label}: done.")
        if secret_for and password:
            st.session_state[SECRET_KEY] = (secret_for, password)
    st.rerun()


def render(user: dict[str, Any]) -> None:
    settings = get_settings()
    st.title("Users")
    _flash()
    try:
        with reading() as conn:
            users = auth.list_users(conn)
    except SQLAlchemyError as exc:
        show_error("Users cannot be listed", exc)
        return
    now = datetime.now(UTC)
    rows = [{
        "username": u.username, "role": u.role, "failed_logins": u.failed_logins,
        "locked": "until " + u.locked_until.astimezone(settings.zone).strftime("%H:%M:%S")
        if u.locked_until and u.locked_until > now else "",
        "last_login_at": u.last_login_at, "created_at": u.created_at,
    } for u in users]
    st.dataframe(table(rows, {
        "username": "User", "role": "Role", "failed_logins": "Failed logins", "locked": "Locked",
        "last_login_at": f"Last login ({settings.tz})", "created_at": "Created",
    }, settings.zone), hide_index=True, key="users_table")
    st.caption("viewer: read-only, patient data masked · operator: retry, cancel, resend, echo · "
               "admin: destinations, rules and users too.")
    actor = user["username"]

    st.subheader("Add a user")
    with st.form("user_add"):
        cols: Sequence[DeltaGenerator] = st.columns(2)
        username = cols[0].text_input("User name", key="user_add_name")
        role = cols[1].selectbox("Role", auth.ROLES, key="user_add_role")
        submitted = st.form_submit_button("Create user", type="primary")
    if submitted:
        password = auth.generate_password()
        _run(f"Create {username.strip()}", auth.create_user, username.strip(), password, role, actor=actor,
             source=AuditSource.UI, secret_for=username.strip(), password=password)

    names = [u.username for u in users]
    if not names:
        return
    st.subheader("Change a user")
    target = st.selectbox("User", names, key="user_target")
    current = next(u for u in users if u.username == target)
    cols = st.columns([2, 1, 1, 1, 1])
    new_role = cols[0].selectbox("Role", auth.ROLES, index=auth.ROLES.index(current.role),
                                 key=f"user_role_{target}")
    if cols[1].button("Save role", key="user_save_role", disabled=new_role == current.role):
        _run(f"Role of {target}", auth.set_role, target, new_role, actor=actor, source=AuditSource.UI)
    if cols[2].button("Reset password", key="user_reset"):
        password = auth.generate_password()
        # Every session of the user ends (the old password may be known elsewhere), but the admin's own.
        _run(f"Password of {target}", auth.set_password, target, password, actor=actor, source=AuditSource.UI,
             keep_session=session_id(), secret_for=target, password=password)
    if cols[3].button("Unlock", key="user_unlock", disabled=not current.failed_logins and not current.locked_until):
        _run(f"Unlock {target}", auth.unlock_user, target, actor=actor, source=AuditSource.UI)
    if cols[4].button("Delete…", key="user_delete", disabled=target == actor):
        confirm.arm("delete_user", target)
    doomed = confirm.confirm_step("delete_user", f"Delete the user {confirm.armed('delete_user')}?",
                                  "Confirm delete")
    if doomed:
        _run(f"Delete {doomed}", auth.delete_user, doomed, actor=actor, source=AuditSource.UI)


render(require_role(Role.ADMIN))
