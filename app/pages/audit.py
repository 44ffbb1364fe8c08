"""Audit log: who changed what and when, from the UI, the CLI, the worker, setup, the API, and
which studies were opened in the viewer (source `viewer`, action `viewer.study_open`, viewer/audit.py).

Read-only for everyone; entries are written only by the audited operations
themselves (core.operations, core.auth, destination and rule changes).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import pager
from app.components.access import require_role
from app.components.db import reading, show_error
from app.components.fmt import table
from app.components.links import study_link, study_link_column
from app.context import get_settings
from core import queries
from core.states import AuditSource, Role

SOURCES = ("", *AuditSource)
ACTIONS = ("", "auth.", "user.", "job.", "study.", "destination.", "rules.", "viewer.")


def render() -> None:
    settings = get_settings()
    zone = settings.zone
    st.title("Audit log")
    try:
        with reading() as conn:
            actors = queries.audit_actors(conn)
    except SQLAlchemyError as exc:
        show_error("The audit log is unavailable", exc)
        return
    with st.form("audit_filters"):
        cols = st.columns(6)
        actor = cols[0].selectbox("Who", ["", *actors], format_func=lambda a: a or "anyone", key="audit_actor")
        action = cols[1].selectbox("Action", ACTIONS, format_func=lambda a: a + "*" if a else "any action",
                                   key="audit_action")
        target = cols[2].text_input("Target", key="audit_target", placeholder="job:12, study:3, user:ann…")
        source = cols[3].selectbox("Source", SOURCES, format_func=lambda s: s or "any source", key="audit_source")
        day_from = cols[4].date_input("From", value=None, key="audit_from", format="YYYY-MM-DD")
        day_to = cols[5].date_input("To (inclusive)", value=None, key="audit_to", format="YYYY-MM-DD")
        st.form_submit_button("Filter", type="primary")

    def start(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=zone)

    flt = queries.AuditFilter(
        actor=actor or None, action_prefix=action or None, target=target.strip() or None, source=source or None,
        at_from=start(day_from) if day_from else None,
        at_to=start(day_to) + timedelta(days=1) if day_to else None,
    )
    cursor = pager.current_cursor("audit", flt)
    try:
        with reading() as conn:
            page = queries.search_audit(conn, flt, cursor=cursor, limit=50)
            studies = queries.studies_of_targets(conn, (r["target"] for r in page.rows))
    except SQLAlchemyError as exc:
        show_error("The audit search failed", exc)
        return
    for row in page.rows:  # an entry about a study or one of its jobs links to the study
        row["study"] = study_link(studies.get(row["target"] or ""))
    if page.rows:
        st.dataframe(table(page.rows, {
            "at": f"When ({settings.tz})", "actor": "Who", "source": "Source", "action": "Action",
            "target": "Target", "study": "Study #", "before": "Before", "after": "After",
        }, zone, json_columns=("before", "after")), hide_index=True, key="audit_table",
            column_config={"Study #": study_link_column()})
    else:
        st.info("No audit entry matches these filters.")
    pager.controls("audit", page.next_cursor, len(page.rows))


require_role(Role.VIEWER)
render()
