"""Queue: routing jobs by state, with retry, cancel and a confirmed bulk retry of dead jobs.

States: queued (waiting for a first attempt or a manual retry), sending (Orthanc is
sending), failed (waiting to retry at next_attempt_at), dead (out of attempts) and
cancelled. Actions call core.operations, which re-checks each job's state under a
row lock, so a job that moved on in the meantime is reported, not trampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from app.components import confirm, pager
from app.components.access import can, needs, require_role
from app.components.db import reading, show_error, writing
from app.components.errors import errors_in_full, one_line
from app.components.fmt import age, table
from app.components.holds import hold_banners
from app.components.links import study_link, study_link_column
from app.components.live import live_section
from app.components.progress import store_progress
from app.context import get_settings
from core import queries
from core.operations import OperationError, cancel_job, retry_dead_jobs, retry_job
from core.states import CANCELLABLE, RETRYABLE, AuditSource, JobState, Purpose, Role

# The states the page lists, in this order, each with what it means for an operator.
STATE_HELP = {
    JobState.QUEUED: "Waiting for a first attempt or a manual retry.",
    JobState.SENDING: "Orthanc is sending these now; they cannot be cancelled mid-flight.",
    JobState.FAILED: "The last attempt failed; the worker retries at the next attempt time.",
    JobState.DEAD: "Out of attempts: these wait for an operator.",
    JobState.CANCELLED: "Cancelled by an operator; they can be retried.",
}
STATES = tuple(STATE_HELP)
BULK_LIMIT = 10000
FLASH_KEY = "queue_flash"


def _flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.warning)(flash[1])


def _each(job_ids: list[int], action: Callable[..., Any], actor: str, verb: str) -> None:
    """Apply `action` to each job in its own transaction; one refusal does not undo others."""
    done, refused = 0, []
    for job_id in job_ids:
        try:
            with writing() as conn:
                action(conn, job_id, actor=actor, source=AuditSource.UI)
            done += 1
        except OperationError as exc:
            refused.append(str(exc))
        except SQLAlchemyError as exc:
            show_error(f"{verb} of job #{job_id}", exc)
            return
    message = f"{verb}: {done} job(s) done." + (" Refused: " + "; ".join(refused[:5]) if refused else "")
    st.session_state[FLASH_KEY] = ("success" if not refused else "warning", message)
    st.rerun()


def render(user: dict[str, Any]) -> None:
    st.title("Queue")
    live_section("queue", lambda: jobs_view(user))


def jobs_view(user: dict[str, Any]) -> None:
    """The filters, the jobs and the actions; refreshed every APP_REFRESH_S seconds (the filters,
    the page and the selection are keyed widgets: a refresh keeps them)."""
    settings = get_settings()
    zone = settings.zone
    _flash()
    try:
        with reading() as conn:
            counts = queries.job_state_counts(conn)
            destinations = queries.recent_destinations(conn, datetime.now(UTC) - timedelta(days=30))
            held = queries.held_destinations(conn)
    except SQLAlchemyError as exc:
        show_error("The queue is unavailable", exc)
        return
    # Jobs of a held destination sit in queued/failed without spending attempts: say why.
    hold_banners(held, zone)
    state = st.radio(
        "State", STATES, horizontal=True, key="queue_state",
        format_func=lambda s: f"{s} ({counts.get(s, 0)})",
    )
    st.caption(STATE_HELP[state])
    cols: Sequence[DeltaGenerator] = st.columns(3)
    destination = cols[0].selectbox("Destination", ["", *destinations], key="queue_dest",
                                    format_func=lambda d: d or "any destination")
    purpose = cols[1].selectbox("Purpose", ["", *Purpose], key="queue_purpose",
                                format_func=lambda p: p or "any purpose")
    page_size = cols[2].selectbox("Rows per page", (25, 50, 100, 200), index=1, key="queue_size")
    flt = queries.JobFilter(state=state, destination=destination or None, purpose=purpose or None)
    cursor = pager.current_cursor("queue", (flt, page_size))
    try:
        with reading() as conn:
            page = queries.list_jobs(conn, flt, before_id=cursor.id if cursor else None, limit=page_size)
    except SQLAlchemyError as exc:
        show_error("The job list failed", exc)
        return
    now = datetime.now(UTC)
    # sends in flight: how far Orthanc is with each store, read now (refreshed with the page)
    progress = store_progress(r["orthanc_job_id"] for r in page.rows) if state == JobState.SENDING else {}
    for row in page.rows:
        row["progress"] = progress.get(row["orthanc_job_id"] or "", "waiting for Orthanc's job id")
        row["next_in"] = age((row["next_attempt_at"] - now).total_seconds()) if state == JobState.FAILED else ""
        row["waiting"] = age((now - row["created_at"]).total_seconds())
        row["study_link"] = study_link(row["study_id"])
        row["error_line"] = one_line(row["last_error"])
    if page.rows:
        columns = {
            "id": "Job", "study_link": "Study #", "accession_number": "Accession", "purpose": "Purpose",
            "destination": "Destination", "attempts": "Attempts",
        }
        if state == JobState.FAILED:
            columns.update({"next_attempt_at": f"Next attempt ({settings.tz})", "next_in": "Next attempt in"})
        if state == JobState.SENDING:
            columns["progress"] = "Progress"
        columns.update({"error_line": "Last error", "created_at": "Created", "waiting": "Age",
                        "updated_at": "Updated", "rule_name": "Rule"})
        st.dataframe(table(page.rows, columns, zone), hide_index=True, key="queue_table",
                     column_config={"Study #": study_link_column(),
                                    "Last error": st.column_config.TextColumn("Last error", width="large")})
    else:
        st.info(f"No {state} jobs match these filters.")
    pager.controls("queue", page.next_cursor, len(page.rows))
    errors_in_full(page.rows)

    operator = can(Role.OPERATOR)
    if page.rows and state in RETRYABLE | CANCELLABLE:
        st.subheader("Actions")
        chosen = st.multiselect("Jobs on this page", [r["id"] for r in page.rows], key="queue_selected",
                                format_func=lambda i: f"#{i}", disabled=not operator, help=needs(Role.OPERATOR))
        # only the actions this state allows, side by side from the left (no gap for a missing one)
        actions = [a for a in (("Retry selected", "queue_retry", retry_job, "Retry", RETRYABLE),
                               ("Cancel selected", "queue_cancel", cancel_job, "Cancel", CANCELLABLE))
                   if state in a[4]]
        for col, (label, key, action, verb, _) in zip(st.columns([1, 1, 4]), actions, strict=False):
            if col.button(label, key=key, disabled=not operator or not chosen) and can(Role.OPERATOR):
                _each(chosen, action, user["username"], verb)

    if state == JobState.DEAD and counts.get(JobState.DEAD, 0):
        st.subheader("Bulk retry")
        label = f"Retry all dead jobs{' to ' + destination if destination else ''}" \
                f"{' for ' + purpose if purpose else ''}…"
        if st.button(label, key="queue_bulk", disabled=not operator, help=needs(Role.OPERATOR)) and can(Role.OPERATOR):
            try:
                with reading() as conn:
                    ids = queries.filtered_job_ids(conn, flt, limit=BULK_LIMIT)
            except SQLAlchemyError as exc:
                show_error("Listing the dead jobs failed", exc)
                return
            confirm.arm("bulk_retry", ids)
        ids = confirm.armed("bulk_retry")
        approved = confirm.confirm_step(
            "bulk_retry",
            f"Retry {len(ids or [])} dead job(s) matching the filter"
            f"{' (the first ' + str(BULK_LIMIT) + ')' if ids and len(ids) >= BULK_LIMIT else ''}? "
            "Each goes back to the queue with fresh attempts.",
            "Confirm bulk retry",
        )
        if approved and can(Role.OPERATOR):
            try:
                with writing() as conn:
                    done = retry_dead_jobs(conn, approved, actor=user["username"], source=AuditSource.UI)
            except SQLAlchemyError as exc:
                show_error("The bulk retry failed; nothing was changed", exc)
                return
            st.session_state[FLASH_KEY] = ("success", f"Bulk retry: {done} dead job(s) queued again.")
            st.rerun()


render(require_role(Role.VIEWER))
