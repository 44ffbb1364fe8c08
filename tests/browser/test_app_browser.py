"""The operations app in a real browser: Debian's chromium driven by playwright.

The app runs exactly as the stack runs it (`streamlit run app/server.py` bound to
127.0.0.1 on a free port, HUB_ENV_FILE pointing at the harness's .env), against the
harness's PostgreSQL and Orthanc with data recorded by core.recorder. The test logs
in through the real form, visits every page from the sidebar, checks that each page
renders its main element without a Streamlit exception, and saves screenshots under
test-artifacts/browser/. Other tests check the session cookie across reloads, logout
and refused sessions, and the live pages' refresh and its pause.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core import auth
from core.db import make_engine
from core.envfile import read_env_file
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, QiDatabase, write_env
from tests.browser.kit import ARTIFACTS, log_in, streamlit_app
from worker.rules_watch import RulesHolder

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# Sidebar title -> what proves the page rendered (a CSS selector of its main element; the
# heading for pages not listed). Every page of app/main.py is visited and photographed.
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
def app_overrides() -> dict[str, str]:
    """Settings that differ from the harness's .env for this test's app (none by default)."""
    return {}


@pytest.fixture
def seeded(qi_db: QiDatabase) -> dict[str, app_flows.Flow]:
    """The admin from .env and a study in each workflow state, recorded with core.recorder."""
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        auth.ensure_admin(conn, qi_db.settings)
        flows = app_flows.standard_set(conn, datetime.now(UTC))
    RulesHolder(qi_db.settings.routing_rules, engine).reload()  # config_status, as the worker writes it
    engine.dispose()
    return flows


@pytest.fixture
def app_server(
    qi_db: QiDatabase, clean_orthanc: OrthancServer, tmp_path: Path, seeded: dict[str, app_flows.Flow],
    app_overrides: dict[str, str],
) -> Iterator[str]:
    """The app on a free loopback port, served as the stack serves it (app/server.py)."""
    clean_orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", free_port())  # type: ignore[union-attr]
    env_file = qi_db.env_file
    if app_overrides:
        env_file = write_env({**read_env_file(qi_db.env_file), **app_overrides}, tmp_path / "app.env")
    log = tmp_path / "streamlit.log"
    with streamlit_app(env_file, free_port(), log) as url:
        yield url
    text = log.read_text(errors="replace")
    assert "DOE^JANE" not in text and qi_db.settings.app_admin_password.get_secret_value() not in text


def _settle(page) -> None:  # noqa: ANN001 - playwright Page
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30000)
    page.wait_for_load_state("networkidle")


def _shot(page, name: str) -> None:  # noqa: ANN001
    """The whole page: Streamlit scrolls inside its main container, so the window is made
    as tall as that container's content for the screenshot, then put back."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    tall = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                         " return m ? m.scrollHeight : 0; }")
    if size and tall > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": min(int(tall) + 40, 12000)})
        page.wait_for_timeout(400)  # charts redraw at the new size
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if size and tall > size["height"]:
        page.set_viewport_size(size)


def _assert_no_exception(page, where: str) -> None:  # noqa: ANN001
    assert page.locator('[data-testid="stException"]').count() == 0, f"Streamlit exception on {where}"


def test_every_page_in_chromium(app_server: str, qi_db: QiDatabase, browser: Any) -> None:
    from playwright.sync_api import expect

    settings = qi_db.settings
    qi_titles = _qi_titles()
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
    # Back on the page that was asked for before the login.
    expect(page.get_by_role("heading", name="Queue", exact=True)).to_be_visible(timeout=30000)
    _settle(page)
    nav = page.locator('[data-testid="stSidebarNav"]')
    for index, title in enumerate(_page_titles(), start=1):
        main_element = PAGES.get(title, "h1")
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
        # the figures, then the last chart's download: the page has run to its end
        expect(page.locator('[data-testid="stMetric"]').first).to_be_visible(timeout=30000)
        expect(page.locator('[data-testid="stDownloadButton"]').last).to_be_visible(timeout=30000)
        _settle(page)
        _assert_no_exception(page, title)
        _shot(page, f"{index:02d}-{_slug(title)}")

    # Drill-down: a click on the failed-sends bar opens the Studies list of exactly its study.
    nav.get_by_role("link", name="Failures", exact=True).click()
    _settle(page)
    bar = page.locator(".st-key-chart_failures_by_destination .point path").first
    bar.hover(force=True)  # plotly's drag layer lies on top: it takes the hover, then the click
    bar.click(force=True)
    expect(page.get_by_role("heading", name="Studies", exact=True)).to_be_visible(timeout=30000)
    _settle(page)
    expect(page.get_by_text("1 study behind: delivery = failed")).to_be_visible(timeout=30000)
    assert "qi=delivery" in page.url and "grp=LPCHROUTER" in page.url
    _assert_no_exception(page, "Studies (drilled)")
    _shot(page, "39-studies-drilled-from-failures")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)


def _page_titles() -> list[str]:
    """Titles of the operations and admin pages present in this checkout (app/main.py)."""
    from app.main import ADMIN, OPERATIONS
    from app.main import PAGES as PAGE_DIR

    return [title for file, title, _, _ in (*OPERATIONS, *ADMIN) if (PAGE_DIR / file).is_file()]


def _qi_titles() -> list[str]:
    """Titles of the QI pages present in this checkout (registered by app/main.py)."""
    from app.main import PAGES as PAGE_DIR
    from app.main import QI

    return [title for file, title, _ in QI if (PAGE_DIR / file).is_file()]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _log_in(page, settings) -> None:  # noqa: ANN001 - playwright Page, Settings
    """Log in as the admin from .env."""
    log_in(page, settings.app_admin_username, settings.app_admin_password.get_secret_value())


def _study_header(page, study_id: int):  # noqa: ANN001, ANN202 - playwright Page and Locator
    return page.get_by_role("heading", name=re.compile(rf"^#{study_id} ·"))


def test_session_survives_a_reload_keeps_the_url_and_ends_for_good(
    app_server: str, qi_db: QiDatabase, seeded: dict[str, app_flows.Flow], browser: Any
) -> None:
    from playwright.sync_api import expect

    settings = qi_db.settings
    study_id = seeded["delivered"].study_id
    wanted = f"{app_server}/study_detail?study={study_id}"
    engine = make_engine(qi_db.url)

    def sessions() -> list:  # noqa: ANN401
        with engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT id_hash, username, revoked_at, expires_at FROM app_sessions ORDER BY created_at")))

    try:
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        # A study link opened without a session: the login form, remembering the study.
        page.goto(wanted)
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        assert page.url.startswith(f"{app_server}/login?next=")
        _log_in(page, settings)
        expect(page.get_by_role("heading", name="Study detail", exact=True)).to_be_visible(timeout=30000)
        expect(_study_header(page, study_id)).to_be_visible(timeout=30000)
        assert page.url == wanted

        # The cookie: opaque, HttpOnly, SameSite=Strict; the database holds only its SHA-256.
        [cookie] = [c for c in context.cookies() if c["name"] == "hub_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert page.evaluate("document.cookie").find("hub_session") == -1
        [row] = sessions()
        assert row.username == settings.app_admin_username and row.revoked_at is None
        assert row.id_hash == hashlib.sha256(cookie["value"].encode()).hexdigest() != cookie["value"]

        # A reload lands on the same study, still logged in.
        page.reload()
        expect(_study_header(page, study_id)).to_be_visible(timeout=30000)
        expect(page.get_by_role("button", name="Log out")).to_be_visible(timeout=30000)  # the sidebar draws last
        assert page.url == wanted
        _settle(page)
        _assert_no_exception(page, "Study detail after a reload")

        # Log out: the session ends in the database; a reload shows the login form.
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{app_server}/login?reason=logged_out", timeout=30000)  # through /logout
        expect(page.get_by_text("You have logged out.")).to_be_visible(timeout=30000)
        assert sessions()[0].revoked_at is not None
        assert not [c for c in context.cookies() if c["name"] == "hub_session"]
        page.goto(wanted)
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'auth.logout'")).scalar() == 1

        # A stolen copy of the ended session's cookie opens nothing.
        context.add_cookies([{"name": "hub_session", "value": cookie["value"], "url": app_server,
                              "httpOnly": True, "sameSite": "Strict"}])
        page.goto(wanted)
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        expect(page.get_by_text("Your session has ended")).to_be_visible()

        # A session that expired is refused on the next page load.
        _log_in(page, settings)
        expect(_study_header(page, study_id)).to_be_visible(timeout=30000)
        with engine.begin() as conn:
            conn.execute(text("UPDATE app_sessions SET expires_at = now() - interval '1 second' "
                              "WHERE revoked_at IS NULL"))
        page.reload()
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        expect(page.get_by_text("Your session has ended")).to_be_visible()

        # A session revoked while its page is open is refused at the next click.
        _log_in(page, settings)
        expect(_study_header(page, study_id)).to_be_visible(timeout=30000)
        _settle(page)
        [live] = [c for c in context.cookies() if c["name"] == "hub_session"]
        with engine.begin() as conn:
            auth.end_session(conn, live["value"])
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Queue", exact=True).click()
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30000)
        expect(page.locator('[data-testid="stRadio"]')).to_have_count(0)
        expect(page.get_by_text("Your session has ended")).to_be_visible()
        _shot(page, "40-session-refused")
        # Logging in again lands where the refused click was going.
        assert page.url == f"{app_server}/login?next=%2Fqueue&reason=expired"
        _log_in(page, settings)
        expect(page.get_by_role("heading", name="Queue", exact=True)).to_be_visible(timeout=30000)
    finally:
        engine.dispose()


@pytest.mark.parametrize("app_overrides", [{"APP_REFRESH_S": "2"}])
def test_live_pages_follow_new_data_keep_filters_and_pause(
    app_server: str, qi_db: QiDatabase, seeded: dict[str, app_flows.Flow], browser: Any
) -> None:
    from playwright.sync_api import expect

    engine = make_engine(qi_db.url)
    numbers = iter(range(900, 1000))

    def last_seen() -> datetime:
        with engine.connect() as conn:
            return conn.execute(text("SELECT max(last_seen_at) FROM app_sessions WHERE revoked_at IS NULL")).scalar_one()

    def new_queued_job() -> None:
        """A study arrives and is routed, as the worker records it; nobody touches the page."""
        now = datetime.now(UTC)
        with engine.begin() as conn:
            app_flows.route(conn, app_flows.arrive(conn, next(numbers), now), now, "LPCHROUTER")

    try:
        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        page.goto(app_server)
        _log_in(page, qi_db.settings)
        expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
        queued = page.locator('[data-testid="stMetric"]').filter(
            has=page.get_by_text("Queued", exact=True)).locator('[data-testid="stMetricValue"]')
        measured = page.get_by_text(re.compile(r"^Measured at "))
        expect(queued).to_have_text("1", timeout=30000)
        first = measured.inner_text()

        # The page follows new data by itself, and its measured time advances.
        new_queued_job()
        expect(queued).to_have_text("2", timeout=30000)
        expect(measured).not_to_have_text(first, timeout=30000)

        # Paused: new data stays off the page, and the time stands still.
        page.get_by_text("Auto-refresh every 2 s").click()
        expect(measured).to_contain_text("auto-refresh paused", timeout=30000)
        _settle(page)
        still = measured.inner_text()
        new_queued_job()
        page.wait_for_timeout(3 * 2000)  # three refresh intervals
        expect(queued).to_have_text("2")
        expect(measured).to_have_text(still)
        _shot(page, "41-overview-paused")

        # Resumed, it refreshes again.
        page.get_by_text("Auto-refresh every 2 s").click()
        expect(queued).to_have_text("3", timeout=30000)
        new_queued_job()
        expect(queued).to_have_text("4", timeout=30000)

        # The Queue keeps its filter across refreshes.
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Queue", exact=True).click()
        expect(page.get_by_role("heading", name="Queue", exact=True)).to_be_visible(timeout=30000)
        _settle(page)
        seen = last_seen()
        # Refreshes are not the user's activity: the session's idle clock does not move.
        for _ in range(2):
            before = measured.inner_text()
            expect(measured).not_to_have_text(before, timeout=30000)  # a refresh happened
        assert last_seen() == seen
        # A filter changed inside the refreshing part is: it moves.
        page.locator('[data-testid="stRadio"]').get_by_text(re.compile(r"^dead \(")).click()
        expect(page.get_by_text("Out of attempts: these wait for an operator.")).to_be_visible(timeout=30000)
        _settle(page)
        assert last_seen() > seen
        before = measured.inner_text()
        expect(measured).not_to_have_text(before, timeout=30000)  # a refresh happened
        expect(page.get_by_text("Out of attempts: these wait for an operator.")).to_be_visible()
        _assert_no_exception(page, "Queue after refreshes")
    finally:
        engine.dispose()


def _grid_row(page, table_key: str, text_in_row: str) -> int:  # noqa: ANN001 - playwright Page
    """The data row of `table_key`'s grid that shows `text_in_row` in a cell, read from the
    grid's accessibility table (glide-data-grid: one <td id="glide-cell-COL-ROW"> per cell)."""
    cell = page.locator(f'.st-key-{table_key} td[id^="glide-cell-"]').filter(
        has_text=re.compile(rf"^{re.escape(text_in_row)}$")).first
    cell.wait_for(state="attached", timeout=30000)
    return int(str(cell.get_attribute("id")).rsplit("-", 1)[1])


def _click_row_checkbox(page, table_key: str, row: int, *, add: bool) -> None:  # noqa: ANN001
    """Tick the selection checkbox of a data row: glide-data-grid draws it on a canvas, at the
    grid's left edge, under a 35 px header, in rows of 35 px (Streamlit's defaults). With
    `add`, Control is held so the row joins the selection instead of replacing it."""
    canvas = page.locator(f'.st-key-{table_key} canvas').first
    canvas.wait_for(state="visible", timeout=30000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None, "the grid's canvas has no box"
    x, y = box["x"] + 16, box["y"] + 35 + row * 35 + 17
    page.mouse.move(x, y)  # the grid tracks the pointer: a hover first makes the click land on the row
    if add:
        page.keyboard.down("Control")
    try:
        page.mouse.click(x, y)
    finally:
        if add:
            page.keyboard.up("Control")


def test_bulk_retry_of_selected_rows(
    app_server: str, qi_db: QiDatabase, seeded: dict[str, app_flows.Flow], browser: Any
) -> None:
    """An operator ticks two failed studies in the Studies grid, presses Retry and confirms: exactly
    their jobs are queued again, each retry audited; no other job moves."""
    from playwright.sync_api import expect

    engine = make_engine(qi_db.url)
    picked = [seeded["dead"], seeded["retrying"]]
    picked_jobs = {job_id for flow in picked for job_id in flow.jobs.values()}

    def job_states() -> dict[int, str]:
        with engine.connect() as conn:
            return {row.id: row.state for row in conn.execute(text("SELECT id, state FROM routing_jobs"))}

    before = job_states()
    assert {before[j] for j in picked_jobs} == {"dead", "failed"}
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(f"{app_server}/studies")
    _log_in(page, qi_db.settings)
    expect(page.get_by_role("heading", name="Studies", exact=True)).to_be_visible(timeout=30000)
    _settle(page)
    for count, flow in enumerate(picked, start=1):
        row = _grid_row(page, "studies_table", flow.accession)
        _click_row_checkbox(page, "studies_table", row, add=count > 1)
        expect(page.get_by_text(f"Selected: {count} stud{'y' if count == 1 else 'ies'}")).to_be_visible(
            timeout=30000)
        _settle(page)
    page.get_by_role("button", name="Retry…", exact=True).click()
    expect(page.get_by_text("Retry the failed and dead jobs of 2 stud(ies)?")).to_be_visible(timeout=30000)
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.get_by_text("Retry: 2 of 2 studies done.")).to_be_visible(timeout=30000)
    _settle(page)
    # The rows acted on are no longer selected: a second click cannot repeat the action on them.
    expect(page.get_by_text("Bulk actions (select rows above)")).to_be_visible(timeout=30000)
    expect(page.get_by_role("button", name="Retry…", exact=True)).to_be_disabled()
    _assert_no_exception(page, "Studies after a bulk retry")
    _shot(page, "21-studies-bulk-retried")
    after = job_states()
    assert {j: s for j, s in after.items() if s != before[j]} == dict.fromkeys(picked_jobs, "queued")
    with engine.connect() as conn:
        audited = [tuple(row) for row in conn.execute(text(
            "SELECT target, actor, source FROM audit_log WHERE action = 'job.retry' ORDER BY target"))]
    engine.dispose()
    assert sorted(audited) == sorted((f"job:{j}", qi_db.settings.app_admin_username, "ui") for j in picked_jobs)


def _live(page, key: str):  # noqa: ANN001, ANN202 - playwright Page and Locator
    """The current copy of element `key`: while a refreshing fragment reruns, Streamlit keeps
    the previous copy in the page, marked stale, until the new one is drawn."""
    return page.locator(f'.st-key-{key}[data-stale="false"]')


@pytest.mark.parametrize("app_overrides", [{"APP_REFRESH_S": "2"}])
def test_operator_finds_a_failed_study_retries_it_and_sees_it_delivered_without_a_reload(
    app_server: str, qi_db: QiDatabase, seeded: dict[str, app_flows.Flow], browser: Any
) -> None:
    """The common path of issue 16, by clicks alone: the Overview's failed studies, the Studies
    list, the study, why its send failed, Retry, and the delivery the worker then records
    appearing on the same page, which was never reloaded."""
    from playwright.sync_api import expect

    engine = make_engine(qi_db.url)
    dead = seeded["dead"]
    [job_id] = dead.jobs.values()
    try:
        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        page.goto(app_server)
        _log_in(page, qi_db.settings)
        expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
        loads = []
        page.on("load", lambda _: loads.append(page.url))  # a reload or typed URL would fire it

        # The Overview's failed studies lead to the Studies list, filtered to exactly them.
        page.locator('a[href*="status=failed"]').click()
        expect(page.get_by_role("heading", name="Studies", exact=True)).to_be_visible(timeout=30000)
        assert "status=failed" in page.url
        _settle(page)
        assert _grid_row(page, "studies_table", dead.accession) == 0

        # The study opens from the list; its failed send says why, whole.
        page.get_by_role("button", name="Open study", exact=True).click()
        expect(_study_header(page, dead.study_id)).to_be_visible(timeout=30000)
        expect(page.get_by_test_id("stCode").filter(has_text="DicomAssociation - connection refused").first
               ).to_be_visible(timeout=30000)
        _settle(page)

        # Retry queues the job again, audited.
        _live(page, "detail_retry").get_by_role("button", name="Retry").click()
        expect(page.get_by_text(f"Retry of job #{job_id}: done.")).to_be_visible(timeout=30000)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT state FROM routing_jobs WHERE id = :j"), {"j": job_id}).scalar() \
                == "queued"
            assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'job.retry' "
                                     "AND target = :t"), {"t": f"job:{job_id}"}).scalar() == 1

        # The worker delivers it; the open page shows the study delivered by itself.
        with engine.begin() as conn:
            app_flows.send_ok(conn, job_id, datetime.now(UTC))
        expect(page.get_by_text(re.compile(r"^Status\s+delivered"))).to_be_visible(timeout=30000)
        _assert_no_exception(page, "Study detail after a retry")
        _shot(page, "22-study-retried-and-delivered")
        assert loads == [], f"the path reloaded the page: {loads}"
    finally:
        engine.dispose()


def test_a_chart_bar_click_lists_exactly_the_studies_it_counts(
    app_server: str, qi_db: QiDatabase, seeded: dict[str, app_flows.Flow], browser: Any
) -> None:
    """Drill-down in a real browser: a click on a bar of the Volumes page's modality chart opens
    the Studies list filtered to that bar, and lists as many studies as the bar counts."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(app_server)
    _log_in(page, qi_db.settings)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Volumes", exact=True).click()
    chart = page.locator(".st-key-chart_volumes_modality .js-plotly-plot")
    bar = chart.locator(".barlayer .point path").first
    bar.wait_for(state="visible", timeout=30000)
    _settle(page)
    # What the bar shows: plotly's customdata of its trace's first point ([query string, count]).
    query, count = chart.evaluate("plot => plot.data.find(t => t.type === 'bar').customdata[0]")
    assert int(count) >= 2, "the seeded day has several studies of one modality"
    # Plotly takes clicks on its drag layer above the bars: click where the bar is drawn.
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly finds the point under the pointer on hover
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(r"/studies\?"), timeout=30000)
    assert query.split("&")[0] in page.url
    noun = "study" if int(count) == 1 else "studies"
    expect(page.get_by_text(re.compile(rf"^{int(count)} {noun} behind: "))).to_be_visible(timeout=30000)
    _settle(page)
    # The grid's accessibility table has one <td id="glide-cell-COL-ROW"> per cell: count the rows.
    page.locator('.st-key-studies_table td[id^="glide-cell-"]').first.wait_for(state="attached", timeout=30000)
    cells = page.locator('.st-key-studies_table td[id^="glide-cell-"]').evaluate_all(
        "cells => cells.map(c => c.id.split('-').pop())")
    assert len(set(cells)) == int(count), f"{int(count)} counted, rows listed: {sorted(set(cells))}"
    _assert_no_exception(page, "Studies after a chart click")
    _shot(page, "23-studies-from-a-chart-bar")
