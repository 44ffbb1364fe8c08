"""Shared filters, freshness and report downloads of the five QI pages.

The filters (received dates in TZ, modality, source AET, destination, rule, and the
bucket size) live in the sidebar and are kept in the session under one key, so that
moving from Turnaround to SLA keeps the same selection. `start_page` is the first
call of every QI page: role check, settings sync, cache refresh, filters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components.access import require_role
from app.components.db import reading, writing
from app.context import get_engine, get_settings
from core import qi, reports
from core.qi import QiFilter
from core.settings import Settings
from core.states import Role

log = logging.getLogger("hub.app.qi")

STORE_KEY = "_qi_filters"
DEFAULT_DAYS = 30
REFRESH_EVERY_S = 30.0
READ_TIMEOUT_MS = 20_000
GRAIN_LABELS = {"day": "Day", "week": "Week (Mon)", "month": "Month"}
DIMENSIONS = (
    ("modality", "modalities", "Modality"),
    ("source_aet", "sources", "Source AET"),
    ("destination", "destinations", "Destination (incl. AI node)"),
    ("rule", "rules", "Rule"),
)


@dataclass(frozen=True)
class QiPage:
    """What a QI page needs after start_page: settings, zone, filters, bucket size."""

    settings: Settings
    zone: ZoneInfo
    flt: QiFilter
    grain: str
    thresholds: dict[str, Any]


def local_today(zone: ZoneInfo) -> date:
    return datetime.now(zone).date()


def _defaults(zone: ZoneInfo) -> dict[str, Any]:
    today = local_today(zone)
    return {"start": today - timedelta(days=DEFAULT_DAYS - 1), "end": today, "grain": "day",
            "modalities": [], "sources": [], "destinations": [], "rules": []}


@st.cache_resource
def _last_refresh() -> dict[str, float]:
    return {"at": 0.0}


def ensure_fresh(settings: Settings) -> None:
    """Sync qi_settings from .env and refresh the QI caches, at most every 30 s per process.

    Only speed depends on it (the views are exact without it), so a failure is
    logged and the page goes on.
    """
    state = _last_refresh()
    if time.monotonic() - state["at"] < REFRESH_EVERY_S:
        return
    state["at"] = time.monotonic()
    try:
        with writing(timeout_ms=30_000) as conn:
            qi.sync_qi_settings(conn, settings)
        with writing(timeout_ms=30_000) as conn:
            qi.refresh(conn)
    except SQLAlchemyError as exc:
        log.warning("QI cache refresh skipped: %s", type(exc).__name__)


@st.cache_data(ttl=300, show_spinner=False)
def _options(database: str, start: date, end: date, tz: str) -> dict[str, list[str]]:
    with reading(READ_TIMEOUT_MS) as conn:
        return qi.filter_options(conn, QiFilter(start, end), ZoneInfo(tz))


def _keep(selection: list[str], options: list[str]) -> list[str]:
    return [value for value in selection if value in options]


def sidebar_filters(settings: Settings) -> tuple[QiFilter, str]:
    """Render the shared filters in the sidebar and return them."""
    zone = settings.zone
    store: dict[str, Any] = st.session_state.setdefault(STORE_KEY, _defaults(zone))
    with st.sidebar:
        st.markdown(f"**QI filters** · times in {settings.tz}")
        picked = st.date_input("First received (from, to)", value=(store["start"], store["end"]),
                               max_value=local_today(zone) + timedelta(days=1), key="qi_dates")
        if isinstance(picked, tuple | list) and len(picked) == 2:  # in order, whatever the client sent
            store["start"], store["end"] = min(picked), max(picked)
        elif isinstance(picked, tuple | list) and len(picked) == 1:  # the second date is being picked
            store["start"] = store["end"] = picked[0]
        elif isinstance(picked, date):
            store["start"] = store["end"] = picked
        try:
            options = _options(settings.qi_db, store["start"], store["end"], settings.tz)
        except SQLAlchemyError:
            options = {name: [] for name, _, _ in DIMENSIONS}
        for name, field, label in DIMENSIONS:
            values = sorted(set(options.get(name, [])) | set(store[field]))
            store[field] = st.multiselect(label, values, default=_keep(store[field], values),
                                          key=f"qi_{field}", placeholder="all")
        grains = list(GRAIN_LABELS)
        store["grain"] = st.radio("Bucket", grains, index=grains.index(store["grain"]),
                                  format_func=GRAIN_LABELS.__getitem__, horizontal=True, key="qi_grain")
    flt = QiFilter(store["start"], store["end"], tuple(store["modalities"]), tuple(store["sources"]),
                   tuple(store["destinations"]), tuple(store["rules"]))
    return flt, store["grain"]


def report_downloads(settings: Settings, flt: QiFilter) -> None:
    """Per-study and daily-summary exports (CSV, XLSX) of the current filters, built on click."""

    def build(fmt: str, summary: bool) -> bytes:
        with get_engine().connect() as conn, conn.begin():
            return reports.export_bytes(conn, flt, settings.zone, fmt, summary=summary)

    span = f"{flt.start.isoformat()}_{flt.end.isoformat()}"
    mimes = {"csv": "text/csv", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
    with st.sidebar.expander("Reports", icon=":material/description:"):
        st.caption("Studies first received in the selected days, with the selected filters.")
        for summary, name, label in ((False, "studies", "Per-study"), (True, "daily-summary", "Daily summary")):
            for fmt in ("csv", "xlsx"):
                st.download_button(
                    f"{label} {fmt.upper()}", data=partial(build, fmt, summary),
                    file_name=f"qi-{name}_{span}.{fmt}", mime=mimes[fmt], on_click="ignore",
                    key=f"qi_report_{name}_{fmt}", icon=":material/download:",
                )


def start_page(title: str, intro: str) -> QiPage:
    """Role check, title, fresh caches, shared filters and report downloads."""
    require_role(Role.VIEWER)
    settings = get_settings()
    st.title(title)
    st.caption(intro)
    ensure_fresh(settings)
    flt, grain = sidebar_filters(settings)
    report_downloads(settings, flt)
    try:
        with reading(READ_TIMEOUT_MS) as conn:
            thresholds = qi.qi_settings(conn)
    except SQLAlchemyError:
        thresholds = {"tz": settings.tz, "ai_result_timeout_s": settings.ai_result_timeout,
                      "sla_turnaround_s": settings.sla_turnaround_s,
                      "sla_ai_round_trip_s": settings.sla_ai_round_trip_s,
                      "sla_to_destinations_s": settings.sla_to_destinations_s}
    return QiPage(settings, settings.zone, flt, grain, thresholds)


def group_picker(key: str, label: str = "Break down by") -> str:
    """Choose a breakdown dimension for one chart ("none" = all studies together)."""
    labels = {"none": "nothing", "modality": "modality", "source_aet": "source AET",
              "destination": "destination", "rule": "rule"}
    return st.selectbox(label, list(labels), format_func=labels.__getitem__, key=key)
