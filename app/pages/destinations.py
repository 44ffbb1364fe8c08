"""Destinations: Orthanc's DICOM modalities, their recent record, holds, C-ECHO, and changes.

Orthanc is the source of truth (REST /modalities, stored in its database), so an
add, edit or delete takes effect at once without a restart. Every value is checked
with the same rules as `.env` (core.dicom_names) before Orthanc is touched; a bad value
shows an error next to the form and changes nothing. Changes are audited.
Holds (an operator's, or the worker's during an outage) live in the QI database, so
they can be put and released while Orthanc is down; core.operations audits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from app.components import confirm
from app.components.access import can, needs, require_role
from app.components.db import reading, show_error, writing
from app.components.destination_form import retrieve_of, validate
from app.components.errors import readable_error
from app.components.fmt import local, table
from app.components.holds import hold_banners
from app.components.live import live_section
from app.components.orthanc import health_client, modalities
from app.context import get_orthanc, get_settings
from core import queries
from core.dicom_names import RETRIEVE_SERVICES, Modality
from core.operations import hold_destination, release_destination
from core.orthanc_client import EchoResult, OrthancError
from core.recorder import audit
from core.settings import Settings
from core.states import AuditSource, HoldKind, Role

STATS_DAYS = 7
ECHO_KEY = "destination_echo"
FLASH_KEY = "destination_flash"
CLEAR_ADD_KEY = "_destination_add_clear"
ADD_FIELDS = ("add_name", "add_aet", "add_host", "add_port", "add_retrieve")
RETRIEVE_HELP = ("Every destination may echo and store to the hub. C-FIND, C-GET and C-MOVE read studies back "
                 "out of it: allow them only to a peer that needs them, and give its host as an IP address "
                 "(Orthanc accepts them only from that address).")


def _source(name: str, entry: dict[str, Any] | None, settings: Settings) -> str:
    env = settings.modalities.get(name)
    if env is None:
        return "app" if entry is not None else "neither Orthanc nor .env (still held)"
    if entry is None:
        return ".env (missing in Orthanc: run make seed-modalities)"
    same = (entry.get("AET"), entry.get("Host"), int(entry.get("Port", 0))) == (env.aet, env.host, env.port)
    return ".env" if same else ".env (edited since: differs from .env)"


def _overview(settings: Settings, current: dict[str, dict[str, Any]]) -> dict[str, queries.DestinationState]:
    """The destinations table, with held ones called out first; returns their states for the hold controls."""
    now = datetime.now(UTC)
    since = now - timedelta(days=STATS_DAYS)
    try:
        with reading() as conn:
            stats = queries.destination_stats(conn, since)
            open_jobs = queries.open_jobs_by_destination(conn)
            states = queries.destination_states(conn, set(current) | set(settings.modalities))
    except SQLAlchemyError as exc:
        show_error("Destination statistics are unavailable", exc)
        stats, open_jobs, states = {}, {}, {}
    hold_banners(states.values(), settings.zone, now)
    # A held destination stays listed even when it is no longer in Orthanc or .env: it must be releasable.
    names = sorted(set(current) | set(settings.modalities) | {n for n, s in states.items() if s.held})
    rows = []
    for name in names:
        entry = current.get(name)
        env = settings.modalities.get(name)
        s = stats.get(name, {})
        attempts = s.get("ok", 0) + s.get("failed", 0)
        jobs = open_jobs.get(name, {})
        rows.append({
            "name": name + (" (AI node)" if name == settings.ai_modality else ""),
            "aet": entry.get("AET") if entry else (env.aet if env else None),
            "host": entry.get("Host") if entry else (env.host if env else None),
            "port": entry.get("Port") if entry else (env.port if env else None),
            "retrieve": ", ".join(retrieve_of(entry) if entry else (env.retrieve if env else ())) or "no",
            "source": _source(name, entry, settings),
            "rate": f"{s.get('ok', 0) / attempts:.0%} of {attempts}" if attempts else "no attempts",
            "last_ok_at": s.get("last_ok_at"),
            "last_error": s.get("last_error"), "last_error_at": s.get("last_error_at"),
            "open": ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "",
            "hold": (states[name].summary(settings.zone, now) if name in states else None) or "",
        })
    if not rows:
        st.info("Orthanc has no destinations yet, and .env lists none.")
        return states
    st.dataframe(table(rows, {
        "name": "Name", "aet": "AET", "host": "Host", "port": "Port", "retrieve": "Query/retrieve",
        "source": "Defined in", "hold": "Hold",
        "rate": f"Success rate ({STATS_DAYS} d, attempts)", "last_ok_at": "Last success",
        "last_error": "Last error", "last_error_at": "Last error at", "open": "Open jobs",
    }, settings.zone), hide_index=True, key="destinations_table")
    st.caption(f"Rates count finished send attempts over the last {STATS_DAYS} days; times in {settings.tz}.")
    return states


def _states(settings: Settings, current: dict[str, dict[str, Any]]) -> dict[str, queries.DestinationState]:
    """Each destination's hold, for the hold controls (the table above says when this fails)."""
    try:
        with reading() as conn:
            return queries.destination_states(conn, set(current) | set(settings.modalities))
    except SQLAlchemyError:
        return {}


def _holds(user: dict[str, Any], names: list[str], states: dict[str, queries.DestinationState]) -> None:
    """Hold or release one destination (operator role), through core.operations, audited as `user`.

    Works while Orthanc is down: a hold is only a row in the QI database, and a PACS
    downtime is exactly when an operator needs it.
    """
    st.subheader("Hold and release")
    st.caption("A held destination receives nothing: its jobs wait in the queue without spending attempts, "
               "and are sent when it is released. The worker holds a destination by itself while it does not "
               "answer C-ECHO (an outage) and releases it when it answers; holding it yourself keeps it held "
               "until someone releases it.")
    if not names:
        st.caption("No destinations.")
        return
    operator = can(Role.OPERATOR)
    target = st.selectbox("Destination", names, key="hold_target")
    state = states.get(target)
    kind = state.kind if state else None
    if state is not None and state.held:
        detail = state.summary(get_settings().zone)
        if kind is HoldKind.OUTAGE:
            zone = get_settings().zone
            nxt = f"{local(state.next_probe_at, zone, '%H:%M:%S')} {zone.key}" if state.next_probe_at else "soon"
            detail = f"{detail}; next C-ECHO probe at {nxt}"
            detail += f"; last error: {state.last_error}" if state.last_error else ""
        st.caption(f"{target}: {detail}.")
    reason = st.text_input("Reason (optional, shown with the hold and in the audit log)", key="hold_reason",
                           max_chars=200, disabled=not operator)
    cols = st.columns([1, 1, 4])
    hold = cols[0].button("Hold", key="hold_button", disabled=not operator or kind is HoldKind.OPERATOR,
                          help=needs(Role.OPERATOR))
    release = cols[1].button("Release", key="release_button", disabled=not operator or kind is None,
                             help=needs(Role.OPERATOR))
    if (hold or release) and can(Role.OPERATOR):
        try:
            with writing() as conn:
                if hold:
                    done = hold_destination(conn, target, actor=user["username"], source=AuditSource.UI,
                                            reason=reason.strip() or None)
                else:
                    done = release_destination(conn, target, actor=user["username"], source=AuditSource.UI)
        except SQLAlchemyError as exc:
            show_error(f"{'Hold' if hold else 'Release'} of {target} failed; nothing was changed", exc)
            return
        if hold:
            message = (f"{target} is on hold: its jobs wait until it is released." if done
                       else f"{target} was already on hold by an operator; nothing changed.")
        else:
            message = (f"{target} released: its waiting jobs are sent now." if done
                       else f"{target} was not on hold; nothing changed.")
            if done and kind is HoldKind.OUTAGE:
                message += " If it still does not answer C-ECHO, the worker holds it again."
        st.session_state[FLASH_KEY] = ("success" if done else "error", message)
        st.rerun()


def _echo(names: list[str]) -> None:
    st.subheader("C-ECHO")
    cols = st.columns([3, 1, 1])
    target = cols[0].selectbox("Destination", names, key="echo_target") if names else None
    operator = can(Role.OPERATOR)
    one = cols[1].button("Echo", key="echo_one", disabled=not operator or not names, help=needs(Role.OPERATOR))
    every = cols[2].button("Echo all", key="echo_all", disabled=not operator or not names, help=needs(Role.OPERATOR))
    if (one or every) and can(Role.OPERATOR):
        chosen = names if every else [target]
        client = health_client()

        def run(name: str) -> tuple[str, EchoResult]:
            return name, client.echo(name, timeout=5)

        with st.spinner("Echoing…"), ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
            results = list(pool.map(run, chosen))
        st.session_state[ECHO_KEY] = [
            {"name": n, "ok": "ok" if r.ok else "FAILED", "latency": round(r.latency_ms, 1),
             "error": readable_error(r.error)}
            for n, r in results
        ]
    shown = st.session_state.get(ECHO_KEY)
    if shown:
        st.dataframe(table(shown, {"name": "Destination", "ok": "Result", "latency": "Latency (ms)",
                                     "error": "Error"}, get_settings().zone),
                     hide_index=True, key="echo_results",
                     column_config={"Error": st.column_config.TextColumn("Error", width="large")})
        for row in shown:  # each failure in full: a table cell cuts a long error off
            if row["ok"] != "ok":
                st.error(f"**{row['name']}** did not answer C-ECHO: {row['error'] or 'no reason given'}",
                         icon=":material/link_off:")


def _flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])


def _save(user: dict[str, Any], modality: Modality, before: dict[str, Any] | None, action: str) -> None:
    """PUT the modality to Orthanc, then audit it; report either failure plainly."""
    try:
        get_orthanc().put_modality(modality)
    except OrthancError as exc:
        st.session_state[FLASH_KEY] = ("error", f"Orthanc refused the change: {exc}")
        st.rerun()
    after = {"aet": modality.aet, "host": modality.host, "port": modality.port, "retrieve": list(modality.retrieve)}
    try:
        with writing() as conn:
            audit(conn, actor=user["username"], source=AuditSource.UI, action=action,
                  target=f"destination:{modality.name}", before=before, after=after)
    except SQLAlchemyError as exc:
        show_error("The change is live in Orthanc but could not be audited", exc)
        return
    st.session_state[FLASH_KEY] = ("success", f"{modality.name} saved: {modality.aet} at {modality.host}:"
                                              f"{modality.port}. It is in effect now.")
    if action == "destination.add":
        st.session_state[CLEAR_ADD_KEY] = True  # an empty form for the next one (a refused add keeps it)
    st.rerun()


def _field_errors(errors: dict[str, str]) -> None:
    labels = {"name": "Name", "aet": "AE title", "host": "Host", "port": "Port"}
    for field, message in errors.items():
        st.error(f"{labels[field]}: {message}")


def _plain(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {"aet": entry.get("AET"), "host": entry.get("Host"), "port": entry.get("Port"),
                                       "retrieve": retrieve_of(entry)}


def _edit(user: dict[str, Any], current: dict[str, dict[str, Any]]) -> None:
    st.subheader("Change destinations")
    if not can(Role.ADMIN):
        st.caption("Adding, editing and deleting destinations needs the admin role.")
        return
    add_tab, edit_tab, delete_tab = st.tabs(["Add", "Edit", "Delete"])
    if st.session_state.pop(CLEAR_ADD_KEY, False):
        for key in ADD_FIELDS:  # before the widgets exist in this run: they start from their defaults
            st.session_state.pop(key, None)
    with add_tab, st.form("destination_add"):
        cols: Sequence[DeltaGenerator] = st.columns(4)
        name = cols[0].text_input("Name", key="add_name", help="Orthanc's name for it, e.g. LPCHROUTER")
        aet = cols[1].text_input("AE title", key="add_aet", max_chars=64)
        host = cols[2].text_input("Host", key="add_host")
        port = cols[3].text_input("Port", key="add_port", value="104")
        retrieve = st.multiselect("Query/retrieve it may use", RETRIEVE_SERVICES, key="add_retrieve",
                                  help=RETRIEVE_HELP)
        submitted = st.form_submit_button("Add destination", type="primary")
    if submitted and can(Role.ADMIN):
        modality, errors = validate(name, aet, host, port, retrieve)
        if modality is not None and modality.name in current:
            errors = {"name": f"{modality.name} already exists; use Edit"}
        if errors:
            with add_tab:
                _field_errors(errors)
        elif modality is not None:  # validate returns a Modality exactly when there are no errors
            _save(user, modality, None, "destination.add")
    with edit_tab:
        if not current:
            st.caption("Nothing to edit.")
        else:
            target = st.selectbox("Destination", sorted(current), key="edit_target")
            entry = current[target]
            with st.form("destination_edit"):
                cols = st.columns(3)
                aet = cols[0].text_input("AE title", value=entry.get("AET", ""), key=f"edit_aet_{target}",
                                         max_chars=64)
                host = cols[1].text_input("Host", value=entry.get("Host", ""), key=f"edit_host_{target}")
                port = cols[2].text_input("Port", value=str(entry.get("Port", "")), key=f"edit_port_{target}")
                retrieve = st.multiselect("Query/retrieve it may use", RETRIEVE_SERVICES, default=retrieve_of(entry),
                                          key=f"edit_retrieve_{target}", help=RETRIEVE_HELP)
                submitted = st.form_submit_button("Save changes", type="primary")
            if submitted and can(Role.ADMIN):
                # An edit keeps DICOM TLS as it is (a MODALITY_ line's `tls` flag sets it).
                modality, errors = validate(target, aet, host, port, retrieve,
                                            use_tls=bool(entry.get("UseDicomTls", False)))
                if errors:
                    _field_errors(errors)
                elif modality is not None:
                    _save(user, modality, _plain(entry), "destination.edit")
    with delete_tab:
        if not current:
            st.caption("Nothing to delete.")
        else:
            target = st.selectbox("Destination", sorted(current), key="delete_target")
            if st.button("Delete…", key="delete_destination"):
                confirm.arm("delete_destination", target)
            name = confirm.confirm_step(
                "delete_destination",
                f"Delete {confirm.armed('delete_destination')} from Orthanc? Jobs queued for it will fail "
                "until it is added again.", "Confirm delete",
            )
            if name and can(Role.ADMIN):
                try:
                    get_orthanc().delete_modality(name)
                    with writing() as conn:
                        audit(conn, actor=user["username"], source=AuditSource.UI, action="destination.delete",
                              target=f"destination:{name}", before=_plain(current.get(name)))
                except OrthancError as exc:
                    st.session_state[FLASH_KEY] = ("error", f"Orthanc refused the delete: {exc}")
                except SQLAlchemyError as exc:
                    show_error("The delete is live in Orthanc but could not be audited", exc)
                    return
                else:
                    st.session_state[FLASH_KEY] = ("success", f"{name} deleted.")
                st.rerun()


def render(user: dict[str, Any]) -> None:
    settings = get_settings()
    st.title("Destinations")
    _flash()
    try:
        current = modalities()
    except OrthancError as exc:
        st.error(f"Orthanc is unavailable, so its destinations cannot be listed: {exc}")
        current = {}
        orthanc_up = False
    else:
        orthanc_up = True

    def table() -> None:
        """The destinations table and hold banners, read again at each refresh."""
        try:
            fresh = modalities() if orthanc_up else current
        except OrthancError:
            fresh = current  # (Orthanc went away since the page was drawn; the table says what it can)
        _overview(settings, fresh)

    live_section("destinations", table)
    states = _states(settings, current)
    _holds(user, sorted(set(current) | set(settings.modalities) | {n for n, s in states.items() if s.held}), states)
    if orthanc_up:
        _echo(sorted(current))
        _edit(user, current)


render(require_role(Role.VIEWER))
