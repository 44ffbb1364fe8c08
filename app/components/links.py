"""Links that open a study in the viewer and in Orthanc's own UI.

The links are followed by the operator's browser, not by the app, so they use the
host name the browser used to reach the app (the Host header) with the viewer's and
Orthanc's ports from .env. The study opens in OHIF, on the viewer gateway (viewer/,
OHIF_PORT), directly by its StudyInstanceUID: the gateway reads the app's session cookie
(the browser sends it to every port of the host), so every role opens it without
logging in again, and the open is audited there. Orthanc's own pages (Explorer, the web
viewer plugin) ask for Orthanc's password, which only admins have (.env): they are
linked for admins only, the web viewer as a fallback when the gateway does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import streamlit as st
from streamlit.elements.lib.column_types import ColumnConfig

from app.components.orthanc import plugins, port_open
from core.settings import Settings


@dataclass(frozen=True)
class Link:
    label: str
    url: str


def browser_host(settings: Settings) -> str:
    """The host part of the URL the browser used for the app (IPv6 kept in brackets)."""
    host = ""
    try:
        host = st.context.headers.get("Host") or ""
    except Exception:  # noqa: BLE001 - no request context (tests, scripts)
        host = ""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    host = host.split(":")[0]
    if host:
        return host
    fallback = settings.orthanc_host
    return "127.0.0.1" if fallback in ("0.0.0.0", "::") else fallback


def orthanc_base(settings: Settings) -> str:
    """Orthanc Explorer as the browser reaches it: https with HTTPS on (the browser must
    trust the hub's CA, README.md "DICOM TLS and HTTPS")."""
    scheme = "https" if settings.https else "http"
    return f"{scheme}://{browser_host(settings)}:{settings.orthanc_web_port}"


def orthanc_study_url(settings: Settings, orthanc_id: str) -> str:
    return f"{orthanc_base(settings)}/app/explorer.html#study?uuid={quote(orthanc_id)}"


def web_viewer_url(settings: Settings, series_orthanc_id: str) -> str:
    return f"{orthanc_base(settings)}/web-viewer/app/viewer.html?series={quote(series_orthanc_id)}"


def ohif_url(settings: Settings, study_uid: str) -> str:
    return f"http://{browser_host(settings)}:{settings.ohif_port}/viewer?StudyInstanceUIDs={quote(study_uid)}"


def ohif_running(settings: Settings) -> bool:
    probe_host = settings.bind_address if settings.bind_address not in ("0.0.0.0", "::") else "127.0.0.1"
    return port_open(probe_host, settings.ohif_port)


def web_viewer_loaded() -> bool:
    return "web-viewer" in plugins()


def viewer_links(
    settings: Settings, study_uid: str, orthanc_id: str | None, series_orthanc_ids: list[str], *, admin: bool,
) -> list[Link]:
    """The viewer link(s) for a study, best available first, then (admins) Orthanc's UI."""
    links: list[Link] = []
    if ohif_running(settings):
        links.append(Link("Open in OHIF viewer", ohif_url(settings, study_uid)))
    elif admin and series_orthanc_ids and web_viewer_loaded():
        links.append(Link("Open in Orthanc web viewer", web_viewer_url(settings, series_orthanc_ids[0])))
    if admin and orthanc_id:
        links.append(Link("Open in Orthanc Explorer", orthanc_study_url(settings, orthanc_id)))
    return links


# --- links to a study inside the app (issue 16: drill down from a job or an audit entry) --

STUDY_PAGE = "study_detail"


def study_link(study_id: int | None) -> str | None:
    """The app's own study page for `study_id` (relative, so it works under any base path)."""
    return f"{STUDY_PAGE}?study={int(study_id)}" if study_id is not None else None


def study_link_column(label: str = "Study #") -> ColumnConfig:
    """A table column of study_link values, shown as the study number; a click opens the study."""
    return st.column_config.LinkColumn(label, display_text=r"study=(\d+)$",
                                       help="Open the study (in a new tab, still logged in).")
