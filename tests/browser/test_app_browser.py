"""The operations app in a real browser: Debian's chromium driven by playwright.

The app runs exactly as the stack runs it (`streamlit run app/main.py` bound to
127.0.0.1 on a free port, HUB_ENV_FILE pointing at the harness's .env), against the
harness's PostgreSQL and Orthanc with data recorded by core.recorder. The test logs
in through the real form, visits every page from the sidebar, checks that each page
renders its main element without a Streamlit exception, and saves screenshots under
test-artifacts/browser/.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from core import auth
from core.db import make_engine
from core.settings import PROJECT_ROOT
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.procs import spawn, tail, terminate
from testkit.harness.stack import OrthancServer, QiDatabase
from testkit.harness.waiting import wait_until
from worker.rules_watch import RulesHolder

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run", "--mute-audio",
]
# Sidebar title -> what proves the page rendered (a CSS selector of its main element).
PAGES = {
    "Overview": '[data-testid="stMetric"]',
    "Studies": '[data-testid="stDataFrame"]',
    "Study detail": '[data-testid="stTextInput"]',
    "Queue": '[data-testid="stRadio"]',
    "Destinations": '[data-testid="stDataFrame"]',
    "Rules": '[data-testid="stDataFrame"]',
    "Audit log": '[data-testid="stDataFrame"]',
    "Users": '[data-testid="stDataFrame"]',
}


@pytest.fixture
def app_server(qi_db: QiDatabase, clean_orthanc: OrthancServer, tmp_path: Path) -> Iterator[str]:
    """The app on a free loopback port, with the admin from .env and a study in each state."""
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        auth.ensure_admin(conn, qi_db.settings)
        app_flows.standard_set(conn, datetime.now(UTC))
    RulesHolder(qi_db.settings.routing_rules, engine).reload()  # config_status, as the worker writes it
    engine.dispose()
    clean_orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", free_port())  # type: ignore[union-attr]
    port = free_port()
    log = tmp_path / "streamlit.log"
    proc = spawn(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        log, env={**os.environ, "HUB_ENV_FILE": str(qi_db.env_file)}, cwd=PROJECT_ROOT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{tail(log)}")
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=60, what="the Streamlit server")
        yield url
    finally:
        terminate(proc)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, tail(log, 80)
        assert "DOE^JANE" not in text and qi_db.settings.app_admin_password.get_secret_value() not in text


def _settle(page) -> None:  # noqa: ANN001 - playwright Page
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30000)
    page.wait_for_load_state("networkidle")


def _shot(page, name: str) -> None:  # noqa: ANN001
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _assert_no_exception(page, where: str) -> None:  # noqa: ANN001
    assert page.locator('[data-testid="stException"]').count() == 0, f"Streamlit exception on {where}"


def test_every_page_in_chromium(app_server: str, qi_db: QiDatabase) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import expect, sync_playwright

    settings = qi_db.settings
    qi_titles = _qi_titles()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            # A page URL opened without a session shows the login form, not the page.
            page.goto(f"{app_server}/queue")
            _settle(page)
            expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
            expect(page.locator('[data-testid="stRadio"]')).to_have_count(0)
            _shot(page, "00-login")

            page.get_by_label("User name", exact=True).fill(settings.app_admin_username)
            page.get_by_label("Password", exact=True).fill("not the password")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Wrong user name or password.")).to_be_visible(timeout=30000)

            page.get_by_label("Password", exact=True).fill(settings.app_admin_password.get_secret_value())
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
            _settle(page)
            nav = page.locator('[data-testid="stSidebarNav"]')
            for index, (title, main_element) in enumerate(PAGES.items(), start=1):
                nav.get_by_role("link", name=title, exact=True).click()
                expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30000)
                _settle(page)
                expect(page.locator(main_element).first).to_be_visible(timeout=30000)
                _assert_no_exception(page, title)
                _shot(page, f"{index:02d}-{_slug(title)}")

            # Study detail with data: open the delivered study from the Studies page.
            nav.get_by_role("link", name="Studies", exact=True).click()
            _settle(page)
            page.get_by_role("button", name="Open study").click()
            expect(page.get_by_role("heading", name="Study detail", exact=True)).to_be_visible(timeout=30000)
            _settle(page)
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible(timeout=30000)
            _assert_no_exception(page, "Study detail (a study)")
            _shot(page, "20-study-detail-with-study")

            for index, title in enumerate(qi_titles, start=30):
                nav.get_by_role("link", name=title, exact=True).click()
                _settle(page)
                expect(page.locator("h1").first).to_be_visible(timeout=30000)
                _assert_no_exception(page, title)
                _shot(page, f"{index:02d}-{_slug(title)}")

            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        finally:
            browser.close()


def _qi_titles() -> list[str]:
    """Titles of the QI pages present in this checkout (registered by app/main.py)."""
    from app.main import PAGES as PAGE_DIR
    from app.main import QI

    return [title for file, title, _ in QI if (PAGE_DIR / file).is_file()]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
