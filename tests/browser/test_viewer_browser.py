"""The study viewer in a real browser: OHIF v3 behind the gateway (viewer/), Debian's chromium.

Everything is real: the pinned OHIF release as `make run` installs it (ops/stack/ohif.py),
the gateway as the stack runs it (`python -m viewer`), the harness's PostgreSQL and
Orthanc with a synthetic CT study stored in it, and for the second test the operations
app (`streamlit run app/server.py`). The tests log in as a user with the viewer role,
open the study and read the viewport's canvas back: the image must be there, as pixels
(testkit/ohif_page.py). They check what a browser without a session gets, that the
gateway refuses writes and Orthanc's REST API even with a session, and that the study
open is audited once. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine, text

from core import auth
from core.db import make_engine
from core.states import AuditSource, Role
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, QiDatabase, write_env
from testkit.harness.viewer_proc import ViewerProcess
from testkit.ohif_page import MIN_LIT, MIN_STD, wait_for_image
from testkit.synthetic import make_study
from tests.browser.kit import ARTIFACTS, log_in, streamlit_app

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PASSWORD = "viewer-password-1"
UID_PREFIX = "1.2.826.0.1.3680043.10.1"


@dataclass
class ViewerStack:
    gateway: ViewerProcess
    values: dict[str, str]
    env_file: Path
    engine: Engine
    study_uid: str
    study_id: int

    @property
    def study_url(self) -> str:
        return f"{self.gateway.url}/viewer?StudyInstanceUIDs={self.study_uid}"

    def audit(self, action: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text("SELECT actor, source, target, after FROM audit_log WHERE action = :a "
                                          "ORDER BY id"), {"a": action}))


@pytest.fixture
def viewer_stack(qi_db: QiDatabase, clean_orthanc: OrthancServer, hub_values: dict[str, str],
                 tmp_path: Path) -> Iterator[ViewerStack]:
    n = 8000 + uuid.uuid4().int % 1000
    study_uid = f"{UID_PREFIX}.{n}"
    datasets = make_study(1, 4, "CT VIEWER", modality="CT", study_uid=study_uid, patient_name="BROWSER^TEST")
    assert clean_orthanc.rest is not None
    orthanc_study, series = app_flows.upload(clean_orthanc.rest, datasets)
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        flow = app_flows.arrive(conn, n, datetime.now(UTC), orthanc_id=orthanc_study,
                                series_orthanc_id=next(iter(series.values())), uid_prefix=UID_PREFIX)
        auth.create_user(conn, "vera", PASSWORD, Role.VIEWER, actor="test", source=AuditSource.SETUP, rounds=4)
    values = {**hub_values, "QI_DB": qi_db.name, "OHIF_PORT": str(free_port()),
              "OPERATOR_UI_PORT": str(free_port())}
    gateway = ViewerProcess(values, tmp_path).start(timeout=60)
    try:
        yield ViewerStack(gateway, values, write_env(values, tmp_path / "stack.env"), engine, study_uid,
                          flow.study_id)
    finally:
        gateway.stop()
        engine.dispose()
        log = gateway.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        for secret in (study_uid, "BROWSER^TEST", PASSWORD):
            assert secret not in log


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _fetch_status(page: Any, path: str, method: str = "GET") -> int:
    """What the page's own script gets (with the session cookie, same origin)."""
    status: int = page.evaluate("([path, method]) => fetch(path, {method: method, body: method === 'GET' ? "
                                "undefined : 'x'}).then(r => r.status)", [path, method])
    return status


def test_a_viewer_logs_in_and_sees_the_study(viewer_stack: ViewerStack, gl_browser: Any) -> None:
    from playwright.sync_api import expect

    stack = viewer_stack
    # Without a session: the study's URL shows the login form, remembering the study.
    anonymous = gl_browser.new_context()
    page = anonymous.new_page()
    page.goto(stack.study_url)
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
    where = urlsplit(page.url)
    assert where.path == "/login"
    assert parse_qs(where.query)["next"] == [f"/viewer?StudyInstanceUIDs={stack.study_uid}"]
    _shot(page, "viewer-00-login")
    # ... and neither OHIF's files nor DICOMweb answer.
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{stack.study_uid}/series", "/app-config.js"):
        assert anonymous.request.get(stack.gateway.url + path).status == 401, path
    assert stack.audit("viewer.study_open") == []

    # Log in as a viewer: back on the study, whose image is drawn.
    log_in(page, "vera", PASSWORD)
    page.wait_for_url(stack.study_url, timeout=30000)
    stats = wait_for_image(page, timeout_ms=90_000)
    assert stats["width"] > 100 and stats["height"] > 100
    assert stats["lit"] > MIN_LIT and stats["std"] > MIN_STD, stats
    _shot(page, "viewer-01-study")
    cookie = next(c for c in anonymous.cookies() if c["name"] == auth.SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The page's own requests, with the session: writes and Orthanc's REST API are refused.
    assert _fetch_status(page, "/dicom-web/studies", "POST") == 405
    assert _fetch_status(page, f"/dicom-web/studies/{stack.study_uid}", "DELETE") == 405
    assert _fetch_status(page, "/tools/find", "POST") == 405
    assert _fetch_status(page, "/dicom-web/servers") == 403
    assert _fetch_status(page, "/instances") == 404
    assert _fetch_status(page, "/app/explorer.html") == 404
    assert _fetch_status(page, f"/dicom-web/studies/{stack.study_uid}/series") == 200
    # One entry for the whole study open (its search, series, metadata, frames and thumbnails).
    [entry] = stack.audit("viewer.study_open")
    assert (entry.actor, entry.source, entry.target) == ("vera", AuditSource.VIEWER, f"study:{stack.study_id}")
    assert entry.after["study_instance_uid"] == stack.study_uid
    assert [(e.actor, e.source) for e in stack.audit("auth.login")] == [("vera", AuditSource.VIEWER)]


@pytest.fixture
def app_server(viewer_stack: ViewerStack, tmp_path: Path) -> Iterator[str]:
    """The operations app on OPERATOR_UI_PORT, as the stack runs it (app/server.py)."""
    with streamlit_app(viewer_stack.env_file, int(viewer_stack.values["OPERATOR_UI_PORT"]),
                       tmp_path / "streamlit.log") as url:
        yield url


def test_the_app_study_page_opens_the_study_in_ohif_without_a_second_login(
    viewer_stack: ViewerStack, app_server: str, gl_browser: Any
) -> None:
    from playwright.sync_api import expect

    stack = viewer_stack
    context = gl_browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.goto(f"{app_server}/study_detail?study={stack.study_id}")
    log_in(page, "vera", PASSWORD)
    link = page.get_by_role("link", name="Open in OHIF viewer")
    expect(link).to_be_visible(timeout=30000)
    assert link.get_attribute("href") == stack.study_url
    # A viewer is not shown Orthanc's own pages (they ask for Orthanc's password).
    expect(page.get_by_role("link", name="Open in Orthanc Explorer")).to_have_count(0)
    with context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.wait_for_url(stack.study_url, timeout=30000)  # the app's session: no second login
    stats = wait_for_image(viewer, timeout_ms=90_000)
    assert stats["lit"] > MIN_LIT and stats["std"] > MIN_STD, stats
    _shot(viewer, "viewer-02-from-the-app")
    [entry] = stack.audit("viewer.study_open")
    assert (entry.actor, entry.target) == ("vera", f"study:{stack.study_id}")
    assert [(e.actor, e.source) for e in stack.audit("auth.login")] == [("vera", AuditSource.UI)]
