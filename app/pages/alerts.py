"""Alerts: the incidents the worker's alerter opened, those that ended, and a test alert.

What fires and when is in worker/alerter.py and docs/operations.md ("Alerts"). This page
only reads the incidents and their deliveries (core.alerts), and sends a test alert
(operator role or above) through the same channels the worker uses; the test is
recorded as an incident of kind `test` and audited (`alerts.test`).
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components.access import can, needs, require_role
from app.components.db import reading, show_error
from app.components.fmt import table
from app.context import get_engine, get_settings
from core import alerts
from core.states import AuditSource, Role

FLASH_KEY = "alerts_flash"
COLUMNS = {
    "id": "#", "kind": "Kind", "key": "For", "summary": "What", "occurrences": "Count", "opened_at": "Opened",
    "last_seen_at": "Last seen", "last_notified_at": "Last message", "last_delivery": "Last delivery",
}


def _rows(incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in incidents:
        if row.get("last_ok") is None:
            row["last_delivery"] = "none (no channel, or not sent yet)"
        else:
            status = "ok" if row["last_ok"] else f"FAILED: {row['last_error']}"
            row["last_delivery"] = f"{row['last_channel']}: {status}"
    return incidents


def _test_button(user: dict[str, Any]) -> None:
    st.subheader("Test alert")
    settings = get_settings()
    for line in alerts.describe_channels(settings):
        st.caption(line)
    operator = can(Role.OPERATOR)
    if st.button("Send test alert", key="alerts_test_button", disabled=not operator, help=needs(Role.OPERATOR)) \
            and can(Role.OPERATOR):
        try:
            with st.spinner("Sending…"):
                incident, attempts = alerts.send_test(get_engine(), settings, actor=user["username"],
                                                      source=AuditSource.UI)
        except alerts.AlertError as exc:
            st.session_state[FLASH_KEY] = ("error", str(exc))
        except SQLAlchemyError as exc:
            show_error("The test alert could not be recorded", exc)
            return
        else:
            ok = bool(attempts) and all(any(a.ok for a in attempts if a.channel == c)
                                        for c in {a.channel for a in attempts})
            lines = "; ".join(alerts.outcome_lines(attempts))
            st.session_state[FLASH_KEY] = ("success" if ok else "error", f"Test alert #{incident}: {lines}")
        st.rerun()


def render() -> None:
    user = require_role(Role.VIEWER)
    settings = get_settings()
    st.title("Alerts")
    st.caption(f"Incidents the worker opens, repeats every {settings.alert_repeat / 3600:g} h while open "
               f"(ALERT_REPEAT) and resolves; checked every {settings.alert_check_s:g} s. Times in {settings.tz}.")
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    try:
        with reading() as conn:
            current = _rows(alerts.open_incidents(conn))
            past = _rows(alerts.past_incidents(conn, limit=50))
    except SQLAlchemyError as exc:
        show_error("Incidents are unavailable", exc)
        current, past = [], []
    st.subheader(f"Open ({len(current)})")
    if current:
        st.dataframe(table(current, COLUMNS, settings.zone), hide_index=True, key="alerts_open")
    else:
        st.success("No open incident.")
    st.subheader("Past")
    if past:
        st.dataframe(table(past, {**COLUMNS, "resolved_at": "Resolved"}, settings.zone), hide_index=True,
                     key="alerts_past")
    else:
        st.caption("No incident has ended yet.")
    _test_button(user)


render()
