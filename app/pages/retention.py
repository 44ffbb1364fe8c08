"""Retention: the policy in force, the last run, and a dry run of what would go now and why the rest stays.

Operators and admins only. The dry run is core.retention.dry_run, the same plan the
worker's retention thread (worker/retention.py) and `./orthanc retention --dry-run`
compute; it reads the database (and, when the disk is under the low watermark, the
sizes of the candidates in Orthanc) and deletes nothing. Studies are shown by internal
number and accession, as on the Studies page: no patient name or ID.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components.access import require_role
from app.components.db import reading, show_error
from app.components.fmt import local, table
from app.components.links import study_link, study_link_column
from app.context import get_engine, get_settings
from core import queries, retention
from core.disk import mib
from core.orthanc_client import OrthancClient, OrthancError
from core.states import Role

PLAN_KEY = "retention_plan"
LIMIT = 1000  # rows shown per table
COLUMNS = {"link": "Study #", "accession": "Accession", "received_at": "Received", "delivered_at": "Delivered",
           "reason": "Why"}


def _rows(decisions: list[retention.Decision], zone: Any) -> list[dict[str, Any]]:
    rows = []
    for d in decisions[:LIMIT]:
        row = d.row(zone)
        row["link"] = study_link(row["study"])
        rows.append(row)
    return rows


def _show(title: str, decisions: list[retention.Decision], key: str) -> None:
    settings = get_settings()
    st.markdown(f"**{title}: {len(decisions)}**" + (f" (the first {LIMIT} shown)" if len(decisions) > LIMIT else ""))
    if decisions:
        st.dataframe(table(_rows(decisions, settings.zone), COLUMNS, settings.zone), hide_index=True, key=key,
                     column_config={"Study #": study_link_column()})


def render() -> None:
    require_role(Role.OPERATOR)
    settings = get_settings()
    st.title("Retention")
    st.caption("Fully delivered studies leave Orthanc by age after delivery, or oldest first when the disk is low; "
               "their records stay, marked purged, so QI figures survive. Never deleted: a study with a job not "
               "succeeded or cancelled, an AI result pending, or touched in the last hour (docs/operations.md, "
               f"'Retention'). Times in {settings.tz}.")
    try:
        with reading() as conn:
            state = queries.retention_state(conn)
            keep_days = retention.rule_keep_days(conn, settings)
    except SQLAlchemyError as exc:
        show_error("The retention state is unavailable", exc)
        return
    policy = retention.Policy.from_settings(settings, keep_days)
    st.markdown(f"**Policy** · {policy.describe() if policy.active else 'off: nothing is ever deleted'} "
                f"· batches of {policy.batch}, every {settings.retention_check_s:g} s")
    if state["ran_at"]:
        st.markdown(f"**Last run** · {local(state['ran_at'], settings.zone)} by {state['actor']} ({state['source']}): "
                    f"{state['purged']} purged, {state['failed']} failed · {state['purged_total']} studies purged "
                    "in all")
    else:
        st.markdown(f"**Last run** · never · {state['purged_total']} studies purged in all")

    if st.button("Dry run now", key="retention_dry_run", type="primary",
                 help="What a run would delete now, and why each other study stays. Deletes nothing."):
        try:
            with st.spinner("Deciding for every study in Orthanc…"), \
                    OrthancClient.from_settings(settings, timeout=30) as orthanc:
                st.session_state[PLAN_KEY] = retention.dry_run(get_engine(), orthanc, settings)
        except (SQLAlchemyError, OrthancError) as exc:
            show_error("The dry run failed", exc)
            return
    plan: retention.Plan | None = st.session_state.get(PLAN_KEY)
    if plan is None:
        return
    st.subheader(f"Dry run at {local(plan.now, settings.zone)}")
    if plan.free_bytes is not None and plan.total_bytes is not None:
        st.caption(f"DICOM_STORAGE {settings.dicom_storage}: {mib(plan.free_bytes)} free of {mib(plan.total_bytes)}"
                   + (" — under the low watermark" if plan.pressure else ""))
    estimate = f" (about {mib(plan.estimated_bytes)})" if plan.estimated_bytes is not None else ""
    _show(f"Would delete{estimate}", plan.purge, "retention_purge")
    kept = plan.kept()
    counts = plan.kept_counts()
    if counts:
        st.caption("Kept: " + ", ".join(f"{n} {c}" for c, n in counts.most_common()))
    _show("Kept, oldest first", kept, "retention_kept")


render()
