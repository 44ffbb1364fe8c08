"""Studies: search by date, accession, patient id, modality, sender, status, destination.

The list is ordered by arrival and paginated by keyset (see core.queries.search_studies),
so a page costs the same at a thousand or a million studies; nothing counts the whole
table. Patient names and ids are only fetched for roles allowed to see them.

Drill-down (issue 16): the URL can name the studies behind a number of a QI page
(`?qi=...`, core.qi.Drill, listed by db/sql/qi_drill_studies.sql) or of the Overview
(`?status=`, `?event=&since=`, `?received=`); the page says which, counts them (the
number it came from), and keeps them under the form's filters. The link can be shared.
Operators select rows for bulk resend, retry and cancel (core.operations, each study
in its own transaction, each action audited).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import confirm, pager
from app.components.access import can, needs, require_role
from app.components.db import reading, show_error, writing
from app.components.fmt import table
from app.components.links import study_link, study_link_column
from app.components.orthanc import modalities
from app.context import get_settings
from core import queries
from core.operations import OperationError, cancel_study, resend_study, retry_study
from core.orthanc_client import OrthancError
from core.qi import Drill, QiError
from core.states import AuditSource, EventType, Role, StudyStatus

DETAIL_PAGE = "pages/study_detail.py"
PAGE_SIZES = (25, 50, 100, 200)
STATUS_LABELS: dict[str, str] = {"": "any status", **{s: s for s in queries.STUDY_STATUSES}}
FLASH_KEY = "studies_flash"
# The Overview's "today" counts: studies with an event of this type since a local day's start.
EVENT_LABELS = {EventType.AI_SENT: "sent to the AI", EventType.AI_RESULT_RECEIVED: "with an AI result back",
                EventType.DELIVERED: "with a delivery", EventType.DELIVERY_FAILED: "with a failed attempt",
                EventType.DELIVERY_DEAD: "with a job gone dead"}


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


def _url_filter(zone: ZoneInfo) -> tuple[dict[str, object], str | None]:
    """What the URL asks for (a drill-down link) as StudyFilter fields, and its description.

    An invalid link is reported and ignored, never half-applied.
    """
    query = {key: st.query_params.get_all(key) for key in st.query_params}

    def last(key: str) -> str | None:
        values = query.get(key) or []
        return values[-1] if values else None

    fields: dict[str, object] = {}
    said: list[str] = []
    try:
        drill = Drill.from_query(query)
        if drill is not None:
            fields.update(drill=drill, zone=zone.key)
            said.append(drill.describe())
        status = last("status")
        if status:
            fields["status"] = str(StudyStatus(status))
            said.append(f"status {status}")
        event = last("event")
        if event:
            since = datetime.fromisoformat(last("since") or "")
            fields.update(event=str(EventType(event)), event_since=since)
            said.append(f"{EVENT_LABELS.get(EventType(event), event)} since {since.astimezone(zone):%Y-%m-%d %H:%M} "
                        f"({zone.key})")
        received = last("received")
        if received:
            day = date.fromisoformat(received)
            fields.update(received_from=_day_start(day, zone), exclude_orphans=True)
            said.append(f"received since {day.isoformat()} 00:00 ({zone.key})")
    except (QiError, ValueError) as exc:
        st.warning(f"This link's filter is not valid and is ignored: {exc}", icon=":material/link_off:")
        return {}, None
    return fields, " · ".join(said) or None


def _combine(form: queries.StudyFilter, url: dict[str, object]) -> queries.StudyFilter:
    """The URL's filter, narrowed by what the form adds (the form's own dates and status
    give way to the link's when it sets them)."""
    if not url:
        return form
    keep = {k: v for k, v in url.items() if v is not None}
    if form.received_from is not None and "received_from" not in keep:
        keep["received_from"] = form.received_from
    if form.received_to is not None and "received_to" not in keep:
        keep["received_to"] = form.received_to
    if form.status and "status" not in keep:
        keep["status"] = form.status
    return replace(form, **keep)  # type: ignore[arg-type]


def _drill_banner(described: str, flt: queries.StudyFilter) -> None:
    """What the link filters on, how many studies that is, and a way back to every study."""
    try:
        with reading() as conn:
            total = queries.count_studies(conn, flt)
    except SQLAlchemyError as exc:
        show_error("Counting the linked studies failed", exc)
        total = None
    counted = f"**{total} stud{'y' if total == 1 else 'ies'}**" if total is not None else "Studies"
    cols = st.columns([5, 1], vertical_alignment="center")
    cols[0].info(f"{counted} behind: {described}", icon=":material/filter_alt:")
    if cols[1].button("Show all", key="studies_clear_link", icon=":material/filter_alt_off:",
                      help="Drop the link's filter and list every study.", width="stretch"):
        st.query_params.clear()
        st.rerun()


def _flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.warning)(flash[1])


def _bulk(study_ids: list[int], user: dict, verb: str, action: Callable[..., object], *args: object) -> None:
    """`action(conn, study_id, *args)` for each study in its own transaction (one refusal
    does not undo the others); the outcome is shown after the rerun."""
    done, refused = 0, []
    for study_id in study_ids:
        try:
            with writing() as conn:
                action(conn, study_id, *args, actor=user["username"], source=AuditSource.UI)
            done += 1
        except OperationError as exc:
            refused.append(f"#{study_id}: {exc}")
        except SQLAlchemyError as exc:
            show_error(f"{verb} of study #{study_id}", exc)
            return
    message = f"{verb}: {done} of {len(study_ids)} stud{'y' if len(study_ids) == 1 else 'ies'} done." + (
        " Refused: " + "; ".join(refused[:5]) if refused else "")
    st.session_state[FLASH_KEY] = ("success" if not refused else "warning", message)
    st.session_state.pop("studies_table", None)  # the rows acted on are deselected, so the next action starts afresh
    st.rerun()


def _bulk_actions(user: dict, selected: list[int]) -> None:
    """Resend, retry and cancel for the selected rows; operators and admins only, confirmed."""
    operator = can(Role.OPERATOR)
    st.markdown(f"**Selected: {len(selected)} stud{'y' if len(selected) == 1 else 'ies'}**"
                if selected else "**Bulk actions** (select rows above)")
    try:
        names = sorted(modalities())
    except OrthancError as exc:
        names = []
        st.caption(f"Resend is unavailable: Orthanc's destinations cannot be listed ({exc}).")
    cols = st.columns([2, 1, 1, 1, 2])
    destination = cols[0].selectbox("Resend to", names, key="studies_bulk_dest", disabled=not operator or not names,
                                    label_visibility="collapsed", placeholder="destination")
    off = not operator or not selected
    if cols[1].button("Resend…", key="studies_bulk_resend", disabled=off or not destination,
                      help=needs(Role.OPERATOR)) and can(Role.OPERATOR):
        confirm.arm("studies_bulk", {"verb": "resend", "ids": selected, "destination": destination})
    if cols[2].button("Retry…", key="studies_bulk_retry", disabled=off, help=needs(Role.OPERATOR)) and can(Role.OPERATOR):
        confirm.arm("studies_bulk", {"verb": "retry", "ids": selected})
    if cols[3].button("Cancel…", key="studies_bulk_cancel", disabled=off,
                      help=needs(Role.OPERATOR)) and can(Role.OPERATOR):
        confirm.arm("studies_bulk", {"verb": "cancel", "ids": selected})
    pending = confirm.armed("studies_bulk") or {}
    ids = pending.get("ids", [])
    what = {
        "resend": f"Resend {len(ids)} stud(ies) to {pending.get('destination')}? Every series is sent again.",
        "retry": f"Retry the failed and dead jobs of {len(ids)} stud(ies)? They go back to the queue with fresh "
                 "attempts.",
        "cancel": f"Cancel the queued, failed and dead jobs of {len(ids)} stud(ies)? Sends under way finish.",
    }.get(pending.get("verb", ""), "")
    approved = confirm.confirm_step("studies_bulk", what, "Confirm")
    if approved and can(Role.OPERATOR):  # the role is checked again: the page may be older than a demotion
        if approved["verb"] == "resend":
            _bulk(approved["ids"], user, f"Resend to {approved['destination']}", resend_study, approved["destination"])
        elif approved["verb"] == "retry":
            _bulk(approved["ids"], user, "Retry", retry_study)
        else:
            _bulk(approved["ids"], user, "Cancel", cancel_study)


def _open(study_id: int) -> None:
    st.session_state["detail_study_id"] = study_id
    st.switch_page(DETAIL_PAGE, query_params={"study": str(study_id)})


def render(user: dict) -> None:
    settings = get_settings()
    zone = settings.zone
    show_phi = can(Role.OPERATOR)
    st.title("Studies")
    _flash()
    url_fields, described = _url_filter(zone)
    form, page_size = _filters(show_phi, zone)
    flt = _combine(form, url_fields)
    if described:
        _drill_banner(described, flt)
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

    selected: list[int] = []
    if not page.rows:
        st.info("No study matches these filters." if cursor is None else "No older studies.")
    else:
        for row in page.rows:
            row["patient"] = row["patient_name"]
            row["study_link"] = study_link(row["id"])
            if row.get("purged_at"):  # deleted from Orthanc by retention; the records stay
                row["status"] = f"{row['status']} · purged"
        frame = table(page.rows, {
            "study_link": "Study #", "first_received_at": f"Received ({settings.tz})", "status": "Status",
            "accession_number": "Accession", "patient": "Patient name", "patient_id": "Patient ID",
            "modalities": "Modality", "description": "Description", "source_aet": "Source AET",
            "series": "Series", "destinations": "Destinations",
        }, zone)
        # Rows are selected for the bulk actions (operators); the study number opens the study.
        event = st.dataframe(
            frame, hide_index=True, key="studies_table", on_select="rerun", selection_mode="multi-row",
            column_config={"Study #": study_link_column()},
        )
        selection = event.get("selection") if isinstance(event, dict) else None  # DataframeState is a dict
        picked = (selection.get("rows") if isinstance(selection, dict) else None) or []
        selected = [int(page.rows[i]["id"]) for i in picked if i < len(page.rows)]
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
    st.caption(f"Newest arrivals first. Query took {elapsed_ms:.0f} ms.{note} A study number opens the study; "
               "select rows for the bulk actions.")
    if page.rows:
        _bulk_actions(user, selected)


render(require_role(Role.VIEWER))
