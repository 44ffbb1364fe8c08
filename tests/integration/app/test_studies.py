"""Studies: filters, keyset pagination, PHI masking by role, opening a study."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core.queries import MASK
from testkit import app_flows
from tests.integration.app.conftest import AppEnv, assert_clean, frame_text, table_rows

pytestmark = pytest.mark.integration


def search(at: AppTest, **fields: object) -> list[dict]:
    for key, value in fields.items():
        widget = at.get_by_key(f"f_{key}")
        widget.set_value(value)  # type: ignore[union-attr]
    at.form_submit_button[0].click()
    at.run()
    assert_clean(at)
    try:
        return table_rows(at, "Accession")
    except AssertionError:
        return []


def test_admin_sees_names_and_a_viewer_sees_them_masked(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    rows = table_rows(open_page("studies", as_="operator"), "Accession")
    assert len(rows) == 7
    jane = next(r for r in rows if r["Accession"] == flows["delivered"].accession)
    assert jane["Patient name"] == "DOE^JANE" and jane["Patient ID"] == "PID-JANE"

    viewer = open_page("studies", as_="viewer")
    rows = table_rows(viewer, "Accession")
    assert {r["Patient name"] for r in rows} == {MASK} and {r["Patient ID"] for r in rows} == {MASK}
    page = frame_text(viewer)
    assert "DOE^JANE" not in page and "PID-JANE" not in page and "PATIENT^NUMBER" not in page
    assert viewer.get_by_key("f_pid").disabled


def test_filters(app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]) -> None:
    at = open_page("studies")
    newest_first = [r["Study #"] for r in table_rows(at, "Accession")]
    assert newest_first == sorted(newest_first, reverse=True)
    assert [r["Study #"] for r in search(at, acc=flows["dead"].accession)] == [flows["dead"].study_id]
    assert [r["Status"] for r in search(at, acc="", status="failed")] == ["failed"]
    assert [r["Study #"] for r in search(at, status="", mod="CT")] == [flows["dead"].study_id]
    assert [r["Study #"] for r in search(at, mod="", aet="MODALITY2")] == [flows["retrying"].study_id]
    assert [r["Study #"] for r in search(at, aet="", dest="MODLINK")] == [flows["retrying"].study_id]
    assert {r["Study #"] for r in search(at, dest="LPCHROUTER")} == {
        flows["delivered"].study_id, flows["dead"].study_id, flows["queued"].study_id}
    assert [r["Study #"] for r in search(at, dest="", pid="PID-JANE")] == [flows["delivered"].study_id]
    assert [r["Status"] for r in search(at, pid="", status="unrouted")] == ["unrouted"]
    tomorrow = datetime.now(app_env.settings.zone).date() + timedelta(days=1)
    assert search(at, status="", **{"from": tomorrow}) == []
    assert "No study matches" in at.info[0].value
    today = datetime.now(app_env.settings.zone).date()
    assert len(search(at, **{"from": today - timedelta(days=1), "to": today})) == 7


def test_keyset_pages_walk_the_whole_list_in_arrival_order(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    start = datetime.now(UTC) - timedelta(hours=3)
    with app_env.engine.begin() as conn:
        for n in range(60):
            app_flows.arrive(conn, n, start + timedelta(minutes=n))
        # Two studies at the very same instant must both be listed exactly once.
        app_flows.arrive(conn, 100, start + timedelta(minutes=30))
    at = open_page("studies")
    at.get_by_key("f_size").set_value(25)
    at.form_submit_button[0].click()
    at.run()
    seen: list[str] = []
    for expected in (25, 25, 11):
        rows = table_rows(at, "Accession")
        assert len(rows) == expected
        seen += [r["Accession"] for r in rows]
        older = at.button(key="studies_older")
        if expected != 11:
            older.click()
            at.run()
        else:
            assert older.disabled
    assert len(seen) == len(set(seen)) == 61
    assert seen[0] == "ACC0000059" and seen[-1] == "ACC0000000"
    at.button(key="studies_newer").click()
    at.run()
    assert table_rows(at, "Accession")[0]["Accession"] == seen[25]
    at.button(key="studies_first").click()
    at.run()
    assert table_rows(at, "Accession")[0]["Accession"] == "ACC0000059"


def test_open_a_study_goes_to_its_detail(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("studies", as_="viewer")
    at.selectbox(key="studies_open_choice").set_value(flows["dead"].study_id)
    at.button(key="studies_open").click()
    at.run()
    assert_clean(at)
    assert at.title[0].value == "Study detail"
    assert at.query_params.get("study") in (str(flows["dead"].study_id), [str(flows["dead"].study_id)])
    assert flows["dead"].accession in at.subheader[0].value
