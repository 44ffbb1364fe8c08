"""Studies: search by date, accession, patient id, modality, sender, status, destination.

The list is ordered by arrival and paginated by keyset (see core.queries.search_studies),
so a page costs the same at a thousand or a million studies; nothing counts the whole
table. Patient names and ids are only fetched for roles allowed to see them.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import pager
from app.components.access import can, require_role
from app.components.db import reading, show_error
from app.components.fmt import table
from app.context import get_settings
from core import queries
from core.states import Role

DETAIL_PAGE = "pages/study_detail.py"
PAGE_SIZES = (25, 50, 100, 200)
STATUS_LABELS: dict[str, str] = {"": "any status", **{s: s for s in queries.STUDY_STATUSES}}


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _filters(show_phi: bool, zone: ZoneInfo) -> tuple[queries.StudyFilter, int]:
    """The filter form; values are applied on submit (no query per keystroke)."""
    with st.form("study_filters"):
        row1 = st.columns(4)
        received_from = row1[0].date_input("Received from", value=None, key="f_from", format="YYYY-MM-DD")
        received_to = row1[1].date_input("Received to (inclusive)", value=None, key="f_to", format="YYYY-MM-DD")
        accession = row1[2].text_input("Accession number", key="f_acc")
        patient_id = row1[3].text_input(
            "Patient ID", key="f_pid", disabled=not show_phi,
            help=None if show_phi else "Your role does not see patient identifiers.",
        )
        row2 = st.columns(5)
        modality = row2[0].text_input("Modality (series)", key="f_mod", placeholder="CR, CT, SR…")
        source_aet = row2[1].text_input("Source AET", key="f_aet")
        status = row2[2].selectbox("Status", list(STATUS_LABELS), format_func=STATUS_LABELS.__getitem__,
                                   key="f_status")
        destination = row2[3].text_input("Destination", key="f_dest", placeholder="e.g. LPCHROUTER")
        page_size = row2[4].selectbox("Rows per page", PAGE_SIZES, index=1, key="f_size")
        st.form_submit_button("Search", type="primary")
    flt = queries.StudyFilter(
        received_from=_day_start(received_from, zone) if received_from else None,
        received_to=_day_start(received_to + timedelta(days=1), zone) if received_to else None,
        accession=accession.strip() or None,
        patient_id=(patient_id.strip() or None) if show_phi else None,
        modality=modality.strip().upper() or None,
        source_aet=source_aet.strip() or None,
        status=status or None,
        destination=destination.strip() or None,
    )
    return flt, int(page_size)


def _open(study_id: int) -> None:
    st.session_state["detail_study_id"] = study_id
    st.switch_page(DETAIL_PAGE, query_params={"study": str(study_id)})


def render() -> None:
    settings = get_settings()
    zone = settings.zone
    show_phi = can(Role.OPERATOR)
    st.title("Studies")
    flt, page_size = _filters(show_phi, zone)
    cursor = pager.current_cursor("studies", (flt, page_size))
    started = time.perf_counter()
    try:
        with reading() as conn:
            page = queries.search_studies(conn, flt, cursor=cursor, limit=page_size, show_phi=show_phi)
            undated = queries.studies_without_arrival(conn) if pager.page_number("studies") == 1 else 0
    except SQLAlchemyError as exc:
        show_error("The study search failed", exc)
        return
    elapsed_ms = (time.perf_counter() - started) * 1000

    if not page.rows:
        st.info("No study matches these filters." if cursor is None else "No older studies.")
    else:
        for row in page.rows:
            row["patient"] = row["patient_name"]
        frame = table(page.rows, {
            "first_received_at": f"Received ({settings.tz})", "status": "Status",
            "accession_number": "Accession", "patient": "Patient name", "patient_id": "Patient ID",
            "modalities": "Modality", "description": "Description", "source_aet": "Source AET",
            "series": "Series", "destinations": "Destinations", "id": "Study #",
        }, zone)
        event = st.dataframe(
            frame, hide_index=True, key="studies_table", on_select="rerun", selection_mode="single-row",
        )
        selected = getattr(getattr(event, "selection", None), "rows", None) or []
        if selected:
            _open(int(page.rows[selected[0]]["id"]))
    pager.controls("studies", page.next_cursor, len(page.rows))
    if page.rows:
        choices = {int(r["id"]): r for r in page.rows}
        cols = st.columns([4, 1])
        chosen = cols[0].selectbox(
            "Open a study", list(choices), key="studies_open_choice",
            format_func=lambda i: f"#{i} · {choices[i]['accession_number'] or 'no accession'} · "
                                  f"{choices[i]['description'] or ''} · {choices[i]['status']}",
        )
        if cols[1].button("Open study", key="studies_open"):
            _open(int(chosen))
    note = f" {undated} study(ies) have no arrival time yet and are not listed." if undated else ""
    st.caption(f"Newest arrivals first. Query took {elapsed_ms:.0f} ms.{note} Select a row to open the study.")


require_role(Role.VIEWER)
render()
