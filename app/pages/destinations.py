"""Destinations: Orthanc's DICOM modalities, their recent record, C-ECHO, and changes.

Orthanc is the source of truth (REST /modalities, stored in its database), so an
add, edit or delete takes effect at once without a restart. Every value is checked
with the same rules as `.env` (hub.dicom_names) before Orthanc is touched; a bad value
shows an error next to the form and changes nothing. Changes are audited.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import confirm
from app.components.access import can, needs, require_role
from app.components.db import reading, show_error, writing
from app.components.destination_form import validate
from app.components.fmt import table
from app.components.orthanc import health_client, modalities
from app.context import get_orthanc, get_settings
from hub import queries
from hub.dicom_names import Modality
from hub.orthanc_client import EchoResult, OrthancError
from hub.recorder import audit
from hub.settings import Settings

STATS_DAYS = 7
ECHO_KEY = "destination_echo"
FLASH_KEY = "destination_flash"


def _source(name: str, entry: dict[str, Any] | None, settings: Settings) -> str:
    env = settings.modalities.get(name)
    if env is None:
        return "app"
    if entry is None:
        return ".env (missing in Orthanc: run make seed-modalities)"
    same = (entry.get("AET"), entry.get("Host"), int(entry.get("Port", 0))) == (env.aet, env.host, env.port)
    return ".env" if same else ".env (edited since: differs from .env)"


def _overview(settings: Settings, current: dict[str, dict[str, Any]]) -> None:
    since = datetime.now(UTC) - timedelta(days=STATS_DAYS)
    try:
        with reading() as conn:
            stats = queries.destination_stats(conn, since)
            open_jobs = queries.open_jobs_by_destination(conn)
    except SQLAlchemyError as exc:
        show_error("Destination statistics are unavailable", exc)
        stats, open_jobs = {}, {}
    names = sorted(set(current) | set(settings.modalities))
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
            "source": _source(name, entry, settings),
            "rate": f"{s.get('ok', 0) / attempts:.0%} of {attempts}" if attempts else "no attempts",
            "last_ok_at": s.get("last_ok_at"),
            "last_error": s.get("last_error"), "last_error_at": s.get("last_error_at"),
            "open": ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "",
        })
    if not rows:
        st.info("Orthanc has no destinations yet, and .env lists none.")
        return
    st.dataframe(table(rows, {
        "name": "Name", "aet": "AET", "host": "Host", "port": "Port", "source": "Defined in",
        "rate": f"Success rate ({STATS_DAYS} d, attempts)", "last_ok_at": "Last success",
        "last_error": "Last error", "last_error_at": "Last error at", "open": "Open jobs",
    }, settings.zone), hide_index=True, key="destinations_table")
    st.caption(f"Rates count finished send attempts over the last {STATS_DAYS} days; times in {settings.tz}.")


def _echo(names: list[str]) -> None:
    st.subheader("C-ECHO")
    cols = st.columns([3, 1, 1])
    target = cols[0].selectbox("Destination", names, key="echo_target") if names else None
    operator = can("operator")
    one = cols[1].button("Echo", key="echo_one", disabled=not operator or not names, help=needs("operator"))
    every = cols[2].button("Echo all", key="echo_all", disabled=not operator or not names, help=needs("operator"))
    if (one or every) and can("operator"):
        chosen = names if every else [target]
        client = health_client()

        def run(name: str) -> tuple[str, EchoResult]:
            return name, client.echo(name, timeout=5)

        with st.spinner("Echoing…"), ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
            results = list(pool.map(run, chosen))
        st.session_state[ECHO_KEY] = [
            {"name": n, "ok": "ok" if r.ok else "FAILED", "latency": round(r.latency_ms, 1), "error": r.error or ""}
            for n, r in results
        ]
    results = st.session_state.get(ECHO_KEY)
    if results:
        st.dataframe(table(results, {"name": "Destination", "ok": "Result", "latency": "Latency (ms)",
                                     "error": "Error"}, get_settings().zone),
                     hide_index=True, key="echo_results")


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
    after = {"aet": modality.aet, "host": modality.host, "port": modality.port}
    try:
        with writing() as conn:
            audit(conn, actor=user["username"], source="ui", action=action, target=f"destination:{modality.name}",
                  before=before, after=after)
    except SQLAlchemyError as exc:
        show_error("The change is live in Orthanc but could not be audited", exc)
        return
    st.session_state[FLASH_KEY] = ("success", f"{modality.name} saved: {modality.aet} at {modality.host}:"
                                              f"{modality.port}. It is in effect now.")
    st.rerun()


def _field_errors(errors: dict[str, str]) -> None:
    labels = {"name": "Name", "aet": "AE title", "host": "Host", "port": "Port"}
    for field, message in errors.items():
        st.error(f"{labels[field]}: {message}")


def _plain(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {"aet": entry.get("AET"), "host": entry.get("Host"), "port": entry.get("Port")}


def _edit(user: dict[str, Any], current: dict[str, dict[str, Any]]) -> None:
    st.subheader("Change destinations")
    if not can("admin"):
        st.caption("Adding, editing and deleting destinations needs the admin role.")
        return
    add_tab, edit_tab, delete_tab = st.tabs(["Add", "Edit", "Delete"])
    with add_tab, st.form("destination_add"):
        cols = st.columns(4)
        name = cols[0].text_input("Name", key="add_name", help="Orthanc's name for it, e.g. LPCHROUTER")
        aet = cols[1].text_input("AE title", key="add_aet", max_chars=64)
        host = cols[2].text_input("Host", key="add_host")
        port = cols[3].text_input("Port", key="add_port", value="104")
        submitted = st.form_submit_button("Add destination", type="primary")
    if submitted and can("admin"):
        modality, errors = validate(name, aet, host, port)
        if modality is not None and modality.name in current:
            errors = {"name": f"{modality.name} already exists; use Edit"}
        if errors:
            with add_tab:
                _field_errors(errors)
        else:
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
                submitted = st.form_submit_button("Save changes", type="primary")
            if submitted and can("admin"):
                modality, errors = validate(target, aet, host, port)
                if errors:
                    _field_errors(errors)
                else:
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
            if name and can("admin"):
                try:
                    get_orthanc().delete_modality(name)
                    with writing() as conn:
                        audit(conn, actor=user["username"], source="ui", action="destination.delete",
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
    _overview(settings, current)
    if orthanc_up:
        _echo(sorted(current))
        _edit(user, current)


render(require_role("viewer"))
