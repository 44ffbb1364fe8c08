"""Study detail: timeline, raw events, series, routing jobs, and the operator's actions.

Retry, cancel and resend go through core.operations, which checks the job's state,
writes the event and the audit entry in the same transaction; the worker's
dispatcher then does the sending. Viewers see everything but can change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import confirm
from app.components.access import can, needs, require_role
from app.components.db import reading, show_error, writing
from app.components.errors import errors_in_full
from app.components.fmt import dicom_datetime, local, table
from app.components.links import viewer_links, web_viewer_loaded, web_viewer_url
from app.components.live import live_section
from app.components.orthanc import modalities
from app.components.progress import store_progress
from app.components.timeline import timeline_figure
from app.context import get_settings
from core import queries
from core.operations import OperationError, cancel_job, resend_study, retry_job
from core.orthanc_client import OrthancError
from core.states import CANCELLABLE, RETRYABLE, AuditSource, JobState, Role, SeriesKind, StudyStatus

STATE_KEY = "detail_study_id"
RESEND_KINDS = {"all": "every series", SeriesKind.ORIGINAL: "original series only",
                SeriesKind.AI_RESULT: "AI results only"}
# Statuses in which the study still changes without a click on this page, so the page refreshes
# itself: the worker works on it, or (failed) an operator retries it here, on the Queue page or
# through the API. A failed study's page is live from the start: it does not switch from still to
# live at the Retry click (Streamlit can then leave the still page's elements behind, drawn twice).
UNFINISHED = {StudyStatus.RECEIVED, StudyStatus.AI_PENDING, StudyStatus.AI_OVERDUE, StudyStatus.DELIVERING,
              StudyStatus.FAILED}


def _selected_study() -> int | None:
    """The study to show: ?study=<id> in the URL, else the last one opened in this session."""
    number = queries.study_number(str(st.query_params.get("study") or ""))
    if number is not None:
        st.session_state[STATE_KEY] = number
    return st.session_state.get(STATE_KEY)


def _lookup() -> None:
    with st.form("study_lookup"):
        cols = st.columns([4, 1])
        key = cols[0].text_input("Find a study", key="detail_lookup",
                                 placeholder="study #, StudyInstanceUID, Orthanc id or accession number")
        found = cols[1].form_submit_button("Find")
    if not found or not key.strip():
        return
    try:
        with reading() as conn:
            ids = queries.find_study(conn, key)
    except SQLAlchemyError as exc:
        show_error("The lookup failed", exc)
        return
    if not ids:
        st.warning("No study matches.")
        return
    if len(ids) > 1:
        st.info(f"{len(ids)} studies match; showing the newest. Others: " + ", ".join(f"#{i}" for i in ids[1:]))
    st.session_state[STATE_KEY] = ids[0]
    st.query_params["study"] = str(ids[0])


def _act(label: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run one audited operation in its own transaction and report the outcome."""
    try:
        with writing() as conn:
            result = action(conn, *args, **kwargs)
    except OperationError as exc:
        st.session_state["detail_flash"] = ("error", str(exc))
    except SQLAlchemyError as exc:
        show_error(label, exc)
        return
    else:
        message = f"{label}: done." + (f" New job #{result}." if isinstance(result, int) else "")
        st.session_state["detail_flash"] = ("success", message)
    st.rerun()


def _job_actions(user: dict, jobs: list[dict]) -> None:
    st.markdown("**Job actions**")
    if not jobs:
        st.caption("This study has no routing jobs.")
        return
    by_id = {j["id"]: j for j in jobs}
    cols = st.columns([3, 1, 1])
    job_id = cols[0].selectbox(
        "Job", list(by_id), key="detail_job",
        format_func=lambda i: f"#{i} · {by_id[i]['purpose']} → {by_id[i]['destination']} · {by_id[i]['state']}",
    )
    job = by_id[job_id]
    operator = can(Role.OPERATOR)
    retry = cols[1].button("Retry", key="detail_retry", disabled=not operator or job["state"] not in RETRYABLE,
                           help=needs(Role.OPERATOR) or "Failed, dead or cancelled jobs can be retried.")
    if retry and can(Role.OPERATOR):
        _act(f"Retry of job #{job_id}", retry_job, job_id, actor=user["username"], source=AuditSource.UI)
    cancel = cols[2].button("Cancel", key="detail_cancel", disabled=not operator or job["state"] not in CANCELLABLE,
                            help=needs(Role.OPERATOR) or "Queued, failed or dead jobs can be cancelled.")
    if cancel and can(Role.OPERATOR):
        _act(f"Cancel of job #{job_id}", cancel_job, job_id, actor=user["username"], source=AuditSource.UI)


def _resend(user: dict, study_id: int) -> None:
    st.markdown("**Resend**")
    operator = can(Role.OPERATOR)
    try:
        names = sorted(modalities())
    except OrthancError as exc:
        st.warning(f"Cannot list destinations: {exc}")
        return
    if not names:
        st.caption("Orthanc has no destinations configured.")
        return
    cols = st.columns([2, 2, 1])
    destination = cols[0].selectbox("Destination", names, key="detail_resend_dest")
    kind = cols[1].selectbox("Series", list(RESEND_KINDS), format_func=RESEND_KINDS.__getitem__,
                             key="detail_resend_kind")
    if cols[2].button("Resend…", key="detail_resend", disabled=not operator, help=needs(Role.OPERATOR)):
        confirm.arm("resend", {"destination": destination, "kind": kind})
    pending = confirm.confirm_step(
        "resend",
        f"Resend {RESEND_KINDS[(confirm.armed('resend') or {}).get('kind', 'all')]} of this study to "
        f"{(confirm.armed('resend') or {}).get('destination')}? Series already delivered there are sent again.",
        "Confirm resend",
    )
    if pending and can(Role.OPERATOR):
        _act(
            f"Resend to {pending['destination']}", resend_study, study_id, pending["destination"],
            actor=user["username"], source=AuditSource.UI, kind=None if pending["kind"] == "all" else pending["kind"],
        )


def render(user: dict) -> None:
    show_phi = can(Role.OPERATOR)
    st.title("Study detail")
    _lookup()
    flash = st.session_state.pop("detail_flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    study_id = _selected_study()
    if study_id is None:
        st.info("Open a study from the Studies page, or find one above.")
        return
    try:
        with reading() as conn:
            first = queries.get_study(conn, study_id)
    except SQLAlchemyError as exc:
        show_error("The study could not be read", exc)
        return
    if first is None:
        st.warning(f"Study #{study_id} does not exist.")
        return
    # A study still on its way (or failed) refreshes itself; a delivered one changes only by an action here.
    live_section("detail", lambda: study_view(user, study_id, show_phi), live=first["status"] in UNFINISHED)


def study_view(user: dict, study_id: int, show_phi: bool) -> None:
    """The study, its timeline, jobs, series and events, and the actions on them."""
    settings = get_settings()
    zone = settings.zone
    try:
        with reading() as conn:
            study = queries.get_study(conn, study_id, show_phi=show_phi)
            if study is None:
                st.warning(f"Study #{study_id} does not exist.")
                return
            events = queries.study_events(conn, study_id)
            series = queries.study_series(conn, study_id)
            jobs = queries.study_jobs(conn, study_id)
    except SQLAlchemyError as exc:
        show_error("The study could not be read", exc)
        return

    st.subheader(f"#{study['id']} · {study['accession_number'] or 'no accession'} · {study['description'] or ''}")
    cols = st.columns(4)
    purged = study.get("purged_at")
    cols[0].markdown(f"**Status**  \n{study['status']}" + (" (orphan AI result)" if study["orphan_ai_result"] else "")
                     + (" · purged" if purged else ""))
    cols[1].markdown(f"**Patient**  \n{study['patient_name'] or '–'} · {study['patient_id'] or '–'}")
    cols[2].markdown(f"**Source AET**  \n{study['source_aet'] or '–'}")
    cols[3].markdown(f"**Study date** (modality's clock)  \n{dicom_datetime(study['study_date'], study['study_time'])}",
                     help="StudyDate and StudyTime as the modality wrote them: its local wall-clock time. "
                          "DICOM records no time zone with them.")
    st.caption(f"StudyInstanceUID {study['study_uid']} · Orthanc id {study['orthanc_id'] or '–'} · "
               f"received {local(study['first_received_at'], zone)} {settings.tz}")

    series_ids = [s["orthanc_id"] for s in series if s["orthanc_id"]]
    if purged:  # retention deleted the images (core/retention.py): no viewer link would open anything
        st.info(f"Purged: deleted from Orthanc by retention at {local(purged, zone)} {settings.tz}. Its records "
                "(timeline, jobs, QI figures) stay; the images are gone from the hub, so it cannot be viewed or "
                "resent here until the modality sends it again.", icon=":material/delete_sweep:")
        links = []
    else:
        links = viewer_links(settings, study["study_uid"], study["orthanc_id"], series_ids, admin=can(Role.ADMIN))
    if links:
        for col, link in zip(st.columns(len(links) + 2), links, strict=False):
            col.link_button(link.label, link.url)

    stages = queries.study_stages(study, events, jobs, settings.ai_modality)
    st.plotly_chart(timeline_figure(stages, events, zone), key="detail_timeline")
    st.dataframe(table(
        [{"stage": s.name, "at": s.at or "–", "note": s.note or ("" if s.at else "pending")} for s in stages],
        {"stage": "Stage", "at": f"Reached ({settings.tz})", "note": "Note"}, zone,
    ), hide_index=True, key="detail_stages")

    tab_jobs, tab_series, tab_events = st.tabs([f"Routing jobs ({len(jobs)})", f"Series ({len(series)})",
                                                f"Events ({len(events)})"], key="detail_tabs")
    with tab_jobs:
        sending = [j for j in jobs if j["state"] == JobState.SENDING]
        progress = store_progress(j["orthanc_job_id"] for j in sending) if sending else {}
        for j in jobs:  # sends in flight: how far Orthanc is, read now (the page refreshes while unfinished)
            j["progress"] = (progress.get(j["orthanc_job_id"] or "", "waiting for Orthanc's job id")
                             if j["state"] == JobState.SENDING else "")
        st.dataframe(table(jobs, {
            "id": "Job", "purpose": "Purpose", "destination": "Destination", "state": "State",
            "attempts": "Attempts", "next_attempt_at": "Next attempt", "last_error": "Last error",
            "progress": "Progress", "rule_name": "Rule", "series": "Series", "resend": "Resend",
            "instances_sent": "Instances sent",
            "created_at": "Created", "finished_at": "Finished",
        }, zone), hide_index=True, key="detail_jobs")
        errors_in_full(jobs)  # why a send failed, whole (the table's cell cuts it), before the Retry button
        _job_actions(user, jobs)
        if not purged:
            _resend(user, study_id)
    with tab_series:
        viewer = not purged and can(Role.ADMIN) and web_viewer_loaded()  # Orthanc's page: Orthanc's password
        for s in series:
            s["viewer"] = web_viewer_url(settings, s["orthanc_id"]) if viewer and s["orthanc_id"] else None
        st.dataframe(
            table(series, {
                "kind": "Kind", "sender_aet": "Sender AET", "modality": "Modality", "description": "Description",
                "series_number": "Number", "instance_count": "Instances", "first_received_at": "Received",
                "stable_at": "Stable", "routed_at": "Routed", "linked_by": "Linked by",
                "series_uid": "SeriesInstanceUID", "viewer": "Viewer",
            }, zone),
            hide_index=True, key="detail_series",
            column_config={"Viewer": st.column_config.LinkColumn("Viewer", display_text="open")},
        )
    with tab_events:
        st.dataframe(table(events, {
            "at": f"At ({settings.tz})", "type": "Type", "destination": "Destination", "job_id": "Job",
            "series_uid": "Series", "detail": "Detail",
        }, zone, json_columns=("detail",)), hide_index=True, key="detail_events")


render(require_role(Role.VIEWER))
