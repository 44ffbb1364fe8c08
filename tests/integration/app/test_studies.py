"""Studies: filters, keyset pagination, PHI masking by role, opening a study."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core.queries import MASK
from testkit import app_flows
from tests.integration.app.conftest import AppEnv, assert_clean, frame_text, study_no, table_rows

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
    newest_first = [study_no(r) for r in table_rows(at, "Accession")]
    assert newest_first == sorted(newest_first, reverse=True)
    assert [study_no(r) for r in search(at, acc=flows["dead"].accession)] == [flows["dead"].study_id]
    assert [r["Status"] for r in search(at, acc="", status="failed")] == ["failed"]
    assert [study_no(r) for r in search(at, status="", mod="CT")] == [flows["dead"].study_id]
    assert [study_no(r) for r in search(at, mod="", aet="MODALITY2")] == [flows["retrying"].study_id]
    assert [study_no(r) for r in search(at, aet="", dest="MODLINK")] == [flows["retrying"].study_id]
    assert {study_no(r) for r in search(at, dest="LPCHROUTER")} == {
        flows["delivered"].study_id, flows["dead"].study_id, flows["queued"].study_id}
    assert [study_no(r) for r in search(at, dest="", pid="PID-JANE")] == [flows["delivered"].study_id]
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


def _select(at: AppTest, row_numbers: list[int]) -> None:
    """Select rows of the Studies table, as a click on their checkboxes does."""
    at.session_state["studies_table"] = {"selection": {"rows": row_numbers, "columns": [], "cells": []}}
    at.run()
    assert_clean(at)


def _rows_of(at: AppTest, *study_ids: int) -> list[int]:
    return [i for i, r in enumerate(table_rows(at, "Accession")) if study_no(r) in study_ids]


def test_bulk_retry_cancel_and_resend_by_an_operator_are_audited_per_study(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("PACS", "PACS", 4242)
    dead, retrying, queued = flows["dead"], flows["retrying"], flows["queued"]
    at = open_page("studies", as_="operator")
    _select(at, _rows_of(at, dead.study_id, retrying.study_id))
    assert "Selected: 2 studies" in frame_text(at)
    at.button(key="studies_bulk_retry").click().run()
    at.button(key="studies_bulk_yes").click().run()
    assert_clean(at)
    assert "Retry: 2 of 2 studies done." in at.success[0].value
    states = dict(app_env.sql("SELECT study_id, state FROM routing_jobs WHERE study_id IN (:a, :b)",
                              a=dead.study_id, b=retrying.study_id))
    assert states == {dead.study_id: "queued", retrying.study_id: "queued"}
    assert {r.target for r in app_env.audit("job.retry")} == {
        f"job:{dead.jobs['delivery:LPCHROUTER']}", f"job:{retrying.jobs['delivery:MODLINK']}"}

    _select(at, _rows_of(at, queued.study_id))
    at.button(key="studies_bulk_cancel").click().run()
    at.button(key="studies_bulk_yes").click().run()
    assert app_env.scalar("SELECT state FROM routing_jobs WHERE study_id = :s", s=queued.study_id) == "cancelled"
    assert len(app_env.audit("job.cancel")) == 1

    _select(at, _rows_of(at, flows["delivered"].study_id, flows["unrouted"].study_id))
    at.selectbox(key="studies_bulk_dest").set_value("PACS").run()
    at.button(key="studies_bulk_resend").click().run()
    assert "Resend 2 stud(ies) to PACS?" in at.warning[0].value
    at.button(key="studies_bulk_yes").click().run()
    assert {r.target for r in app_env.audit("study.resend")} == {
        f"study:{flows['delivered'].study_id}", f"study:{flows['unrouted'].study_id}"}
    assert all(r.after["destination"] == "PACS" for r in app_env.audit("study.resend"))


def test_a_viewer_gets_no_bulk_action_and_forged_clicks_change_nothing(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("PACS", "PACS", 4242)
    before = app_env.sql("SELECT id, state FROM routing_jobs ORDER BY id")
    at = open_page("studies", as_="viewer")
    _select(at, _rows_of(at, flows["dead"].study_id, flows["queued"].study_id))
    for key in ("studies_bulk_retry", "studies_bulk_cancel", "studies_bulk_resend"):
        button = at.button(key=key)
        assert button.disabled, key
        button._value = True  # what a tampered client sends for a disabled button
        at.run()
        assert_clean(at)
        assert not [b for b in at.button if b.key == "studies_bulk_yes"], key
    assert app_env.sql("SELECT id, state FROM routing_jobs ORDER BY id") == before
    assert app_env.sql("SELECT action FROM audit_log WHERE action LIKE 'job.%' OR action LIKE 'study.%'") == []
