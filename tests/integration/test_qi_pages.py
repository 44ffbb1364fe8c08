"""The five QI pages render headlessly (AppTest) against a real database with the fixture.

Each page is run as the app's navigation runs it: a logged-in session (its raw session
id in st.session_state, where the app looks when there is no cookie), HUB_ENV_FILE
pointing at the test's database. The shared filters are pre-set to the fixture's days, so the numbers on the page are the
hand-computed ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import auth, qi
from core.db import make_engine
from core.settings import PROJECT_ROOT
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

PAGES = PROJECT_ROOT / "app" / "pages"
QI_PAGES = ("qi_turnaround", "qi_ai_round_trip", "qi_failures", "qi_volumes", "qi_sla")


def _clear_caches() -> None:
    try:
        from app.context import get_engine

        get_engine().dispose()
    except Exception:  # noqa: BLE001 - nothing cached yet, or a dropped database
        pass
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_db(qi_db: QiDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[QiDatabase]:
    engine = make_engine(qi_db.url)
    with engine.begin() as conn:
        auth.create_user(conn, "vera", "viewer-password-1", "viewer", actor="test", source="setup", rounds=4)
        qi.sync_qi_settings(conn, qi_db.settings)
        qi_fixture.build(conn)
    engine.dispose()
    monkeypatch.setenv("HUB_ENV_FILE", str(qi_db.env_file))
    _clear_caches()
    try:
        yield qi_db
    finally:
        _clear_caches()


def open_page(name: str, start: date = date(2026, 3, 7), end: date = date(2026, 3, 8), **store: object) -> AppTest:
    from app.context import get_engine, get_settings

    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    with get_engine().begin() as conn:  # a real app session, as /login opens one (no browser: no cookie)
        at.session_state["_session_id"] = auth.start_session(conn, "vera", ttl_s=get_settings().app_session_ttl)
    at.session_state["_qi_filters"] = {"start": start, "end": end, "grain": "day", "modalities": [], "sources": [],
                                       "destinations": [], "rules": [], **store}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


@pytest.mark.parametrize("name", QI_PAGES)
def test_every_chart_has_a_definition_and_a_download(app_db: QiDatabase, name: str) -> None:
    at = open_page(name)
    charts = {str(c.key).removeprefix("chart_") for c in at.get("plotly_chart")}
    downloads = {str(d.key).removeprefix("download_") for d in at.get("download_button")}
    assert len(charts) >= 2
    assert charts <= downloads  # each chart offers its data
    assert len(at.caption) >= len(charts) + 1  # and explains its definition
    # the shared filters and the report downloads are in the sidebar
    assert at.sidebar.date_input(key="qi_dates").value == (date(2026, 3, 7), date(2026, 3, 8))
    assert "America/Los_Angeles" in "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "SECRET^" not in str(at)  # patient names are never shown


def test_turnaround_page_numbers(app_db: QiDatabase) -> None:
    at = open_page("qi_turnaround")
    shown = metrics(at)
    assert shown["Delivered studies"] == "3"
    assert shown["p50"] == "13 min 10 s"  # S1: 790 s
    assert shown["Within 1 h"] == "60.0%"  # 3 met of 5 due
    assert "first instance received to the last required delivery" in captions(at)


def test_turnaround_breakdown_by_destination(app_db: QiDatabase) -> None:
    at = open_page("qi_turnaround")
    at.selectbox(key="qi_turnaround_group").set_value("destination").run()
    assert not at.exception
    assert "By destination" in "\n".join(str(m.value) for m in at.markdown)


def test_ai_page_numbers(app_db: QiDatabase) -> None:
    at = open_page("qi_ai_round_trip")
    shown = metrics(at)
    assert (shown["Sent to the AI"], shown["Result back"], shown["Overdue"], shown["No result"]) == (
        "3", "2", "66.7%", "33.3%")
    overdue = at.dataframe[0].value
    assert list(overdue["accession_number"]) == ["ACC-S4", "ACC-S2"]


def test_failures_page_numbers(app_db: QiDatabase) -> None:
    at = open_page("qi_failures")
    shown = metrics(at)
    assert shown["Routed studies"] == "5"
    assert shown["Failed studies"] == "1 (20.0%)"
    assert shown["Failed attempts"] == "4 (36.4%)"  # 4 of 11
    errors = at.dataframe[0].value
    assert list(errors["error"]) == [qi_fixture.ERR_REJECTED, qi_fixture.ERR_REFUSED]


def test_volumes_and_sla_pages(app_db: QiDatabase) -> None:
    volumes = metrics(open_page("qi_volumes"))
    assert volumes["Studies received"] == "6"
    sla = metrics(open_page("qi_sla"))
    assert sla["Turnaround ≤ 1 h"] == "60.0%"
    assert sla["AI round trip ≤ 30 min"] == "33.3%"
    assert sla["To destinations ≤ 10 min"] == "75.0%"


def test_filters_apply_and_empty_ranges_say_so(app_db: QiDatabase) -> None:
    at = open_page("qi_volumes", modalities=["CR"])
    assert metrics(at)["Studies received"] == "3"
    empty = open_page("qi_turnaround", start=date(2025, 1, 1), end=date(2025, 1, 2))
    assert any("No data for these filters" in str(i.value) for i in empty.info)


def test_pages_need_a_login(app_db: QiDatabase) -> None:
    at = AppTest.from_file(str(PAGES / "qi_sla.py"), default_timeout=30)
    at.run()
    assert not at.get("plotly_chart")
    assert any("log in" in str(i.value).lower() for i in at.info)
