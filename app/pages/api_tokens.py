"""API tokens (admins only): create, list and revoke the bearer tokens of the workflow API.

The API on ROUTING_API_PORT (api/) takes `Authorization: Bearer <token>`. A token is
shown once, right after it is created: only its SHA-256 is kept (core.auth). Its role
is one of the app's: a viewer token reads with patient names masked, an operator token
also retries, cancels, resends, holds and releases, as a user of that role would here.
Creating and revoking are audited; what a token's holder does through the API is
audited with the token's name as the actor and the source `api`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from app.components import confirm
from app.components.access import require_role
from app.components.db import reading, show_error, writing
from app.components.fmt import table
from app.context import get_settings
from core import auth
from core.states import AuditSource, Role

FLASH_KEY = "tokens_flash"
SECRET_KEY = "tokens_new_secret"
EXPIRY_DAYS = {0: "never", 30: "in 30 days", 90: "in 90 days", 365: "in a year"}


def _flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    secret = st.session_state.pop(SECRET_KEY, None)
    if secret:
        st.warning(f"Token **{secret[0]}** (shown once, now: copy it into the client's secret store; "
                   "it cannot be shown again):")
        st.code(secret[1], language=None)


def _run(label: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One audited change in its own transaction; the flash message says how it went."""
    try:
        with writing() as conn:
            result = action(conn, *args, **kwargs)
    except auth.TokenError as exc:
        st.session_state[FLASH_KEY] = ("error", f"{label}: {exc}")
        return None
    except SQLAlchemyError as exc:
        show_error(label, exc)
        return None
    st.session_state[FLASH_KEY] = ("success", f"{label}: done.")
    return result


def render(user: dict[str, Any]) -> None:
    settings = get_settings()
    st.title("API tokens")
    st.caption(f"Bearer tokens of the workflow API on port {settings.routing_api_port} "
               f"(`Authorization: Bearer <token>`; paths under /v1/, the schema at /openapi.json).")
    _flash()
    try:
        with reading() as conn:
            tokens = auth.list_tokens(conn)
    except SQLAlchemyError as exc:
        show_error("Tokens cannot be listed", exc)
        return
    now = datetime.now(UTC)
    if tokens:
        st.dataframe(table([{
            "name": t.name, "role": t.role, "state": t.state(now), "created_by": t.created_by,
            "created_at": t.created_at, "expires_at": t.expires_at, "last_used_at": t.last_used_at,
            "revoked_at": t.revoked_at,
        } for t in tokens], {
            "name": "Name", "role": "Role", "state": "State", "created_by": "Created by",
            "created_at": f"Created ({settings.tz})", "expires_at": "Expires", "last_used_at": "Last used",
            "revoked_at": "Revoked",
        }, settings.zone), hide_index=True, key="tokens_table")
    else:
        st.info("No API tokens yet.")
    st.caption("viewer: reads, patient names and ids masked · operator: also retry, cancel, resend, hold, "
               "release · admin: as operator (the API manages no users, rules or tokens).")
    actor = user["username"]

    st.subheader("Create a token")
    with st.form("token_add"):
        cols: Sequence[DeltaGenerator] = st.columns(3)
        name = cols[0].text_input("Name (the actor in the audit log)", key="token_add_name",
                                  placeholder="e.g. ris-integration")
        role = cols[1].selectbox("Role", auth.ROLES, key="token_add_role")
        days = cols[2].selectbox("Expires", list(EXPIRY_DAYS), index=3, format_func=EXPIRY_DAYS.__getitem__,
                                 key="token_add_expiry")
        submitted = st.form_submit_button("Create token", type="primary")
    if submitted:
        expires = now + timedelta(days=days) if days else None
        created = _run(f"Create {name.strip()}", auth.create_token, name.strip(), role, actor=actor,
                       source=AuditSource.UI, expires_at=expires)
        if created is not None:
            st.session_state[SECRET_KEY] = (created[0].name, created[1])
        st.rerun()

    active = [t.name for t in tokens if t.state(now) == "active"]
    if not active:
        return
    st.subheader("Revoke a token")
    cols = st.columns([3, 1])
    target = cols[0].selectbox("Token", active, key="token_target")
    if cols[1].button("Revoke…", key="token_revoke"):
        confirm.arm("revoke_token", target)
    doomed = confirm.confirm_step(
        "revoke_token", f"Revoke the token {confirm.armed('revoke_token')}? Its next request is refused; "
                        "this cannot be undone (create a new token instead).", "Confirm revoke")
    if doomed:
        _run(f"Revoke {doomed}", auth.revoke_token, doomed, actor=actor, source=AuditSource.UI)
        st.rerun()


render(require_role(Role.ADMIN))
