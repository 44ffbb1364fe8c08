"""Issue 16 under AppTest: live pages and their pause, readable errors and times, links to studies,
the destination form, the rules diff.

That the live pages really refresh by themselves in a browser (and stop when paused)
is tests/browser/test_app_browser.py's; here each refresh is a run of the page.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from core import operations
from testkit import app_flows
from testkit.harness.ports import free_port
from tests.integration.app.conftest import AppEnv, assert_clean, table_rows

pytestmark = pytest.mark.integration

LONG_ERROR = ("DicomAssociation - C-STORE to AET \"LPCHROUTER\": the peer refused the presentation context "
              "for 1.2.840.10008.5.1.4.1.1.1 (CR Image Storage) with every transfer syntax offered: "
              "Explicit VR Little Endian, Implicit VR Little Endian, JPEG Lossless\n"
              "while sending instance 2 of 3 of series 1.2.826.0.1.3680043.10.1.9.1")


def captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_overview_is_live_and_can_be_paused(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("overview", as_="viewer")
    live = at.toggle(key="overview_live")
    assert live.value is True and f"every {app_env.settings.app_refresh_s} s" in live.label
    assert "Measured at" in captions(at) and app_env.settings.tz in captions(at)
    assert f"refreshes every {app_env.settings.app_refresh_s} s" in captions(at)
    assert {m.label: m.value for m in at.metric}["Queued"] == "1"
    # New data, the next refresh: the count follows.
    with app_env.engine.begin() as conn:
        app_flows.route(conn, app_flows.arrive(conn, 90, datetime.now(UTC)), datetime.now(UTC), "LPCHROUTER")
    at.run()
    assert {m.label: m.value for m in at.metric}["Queued"] == "2"
    # Paused: the page says so (the browser test checks that nothing then changes).
    at.toggle(key="overview_live").set_value(False).run()
    assert_clean(at)
    assert "auto-refresh paused" in captions(at)


def test_destinations_table_is_live_and_its_forms_are_not(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    app_env.orthanc.rest.put_modality("PACS", "PACS", free_port())
    at = open_page("destinations", as_="admin")
    assert at.toggle(key="destinations_live").value is True and "Measured at" in captions(at)
    assert [r["Name"] for r in table_rows(at, "Defined in")] == ["PACS"]
    # A destination added elsewhere shows up at the next refresh; what is typed in the forms stays.
    at.text_input(key="hold_reason").input("PACS upgrade")
    app_env.orthanc.rest.put_modality("PACS2", "PACS2", free_port())
    at.run()
    assert [r["Name"] for r in table_rows(at, "Defined in")] == ["PACS", "PACS2"]
    assert at.text_input(key="hold_reason").value == "PACS upgrade"


def test_queue_filters_survive_a_refresh_and_rows_link_to_their_study(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("queue", as_="operator")
    assert at.toggle(key="queue_live").value is True
    at.radio(key="queue_state").set_value("dead").run()
    job = flows["dead"].jobs["delivery:LPCHROUTER"]
    at.multiselect(key="queue_selected").set_value([job]).run()
    at.run()  # a refresh
    assert at.radio(key="queue_state").value == "dead"
    assert at.multiselect(key="queue_selected").value == [job]
    [row] = table_rows(at, "Job")
    assert row["Study #"] == f"study_detail?study={flows['dead'].study_id}"


def test_queue_shows_each_last_error_whole_and_readable(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    now = datetime.now(UTC)
    with app_env.engine.begin() as conn:
        jobs = []
        for n in (70, 71):
            flow = app_flows.arrive(conn, n, now - timedelta(minutes=5))
            job = app_flows.route(conn, flow, now - timedelta(minutes=4), "LPCHROUTER")
            app_flows.send_fail(conn, job, now - timedelta(minutes=3), error=LONG_ERROR, retry_at=None)
            jobs.append(job)
        flow = app_flows.arrive(conn, 72, now - timedelta(minutes=5))
        rest = app_flows.route(conn, flow, now - timedelta(minutes=4), "MODLINK")
        app_flows.send_fail(conn, rest, now - timedelta(minutes=3), retry_at=None,
                            error="Orthanc POST /modalities/MODLINK/store -> HTTP 500: Error in the network protocol")
    at = open_page("queue")
    at.radio(key="queue_state").set_value("dead").run()
    cells = {r["Job"]: r["Last error"] for r in table_rows(at, "Job")}
    assert cells[jobs[0]] == " ".join(LONG_ERROR.split())  # one line in the table, nothing cut
    assert cells[rest] == "Error in the network protocol (Orthanc: HTTP 500 on POST /modalities/MODLINK/store)"
    # Below the table, each distinct error in full, with the jobs that have it.
    codes = [c.value for c in at.code]
    assert LONG_ERROR in codes
    assert f"Jobs #{jobs[1]}, #{jobs[0]}" in captions(at)


def test_study_detail_refreshes_only_while_the_study_is_unfinished(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("studies")
    at.switch_page("pages/study_detail.py")
    at.query_params["study"] = str(flows["ai_pending"].study_id)
    at.run()
    assert_clean(at)
    assert at.toggle(key="detail_live").value is True and "Measured at" in captions(at)
    # A failed study waits for a retry (here, on the Queue page or through the API): live too,
    # with why it failed in full above the Retry button.
    at.query_params["study"] = str(flows["dead"].study_id)
    at.run()
    assert at.toggle(key="detail_live").value is True
    assert "DicomAssociation - connection refused" in [c.value for c in at.code]
    at.query_params["study"] = str(flows["delivered"].study_id)
    at.run()
    assert not [t for t in at.toggle if t.key == "detail_live"]


def test_every_time_on_the_study_page_names_its_zone(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("studies")
    at.switch_page("pages/study_detail.py")
    at.query_params["study"] = str(flows["delivered"].study_id)
    at.run()
    tz = app_env.settings.tz
    study_date = next(m for m in at.markdown if str(m.value).startswith("**Study date**"))
    assert "(modality's clock)" in study_date.value and "no time zone" in study_date.proto.help
    assert "received " in captions(at) and tz in captions(at)
    jobs = table_rows(at, "Destination")
    assert {f"Created ({tz})", f"Finished ({tz})"} <= set(jobs[0])
    series = table_rows(at, "SeriesInstanceUID")
    assert {f"Received ({tz})", f"Stable ({tz})"} <= set(series[0])


def test_audit_entries_about_a_job_or_a_study_link_to_the_study(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    job = flows["dead"].jobs["delivery:LPCHROUTER"]
    with app_env.engine.begin() as conn:
        operations.retry_job(conn, job, actor="ada", source="ui")
        operations.resend_study(conn, flows["delivered"].study_id, "MODLINK", actor="ada", source="ui")
    rows = {r["Action"]: r for r in table_rows(open_page("audit"), "Action")}
    assert rows["job.retry"]["Study #"] == f"study_detail?study={flows['dead'].study_id}"
    assert rows["study.resend"]["Study #"] == f"study_detail?study={flows['delivered'].study_id}"
    assert not isinstance(rows["user.create"]["Study #"], str)  # no study: no link (an empty cell)


def test_echo_errors_are_readable_and_whole(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    app_env.orthanc.rest.put_modality("DOWN", "DOWN", free_port())
    at = open_page("destinations", as_="operator")
    at.selectbox(key="echo_target").set_value("DOWN")
    at.button(key="echo_one").click().run()
    [row] = table_rows(at, "Latency (ms)")
    assert row["Result"] == "FAILED"
    assert not row["Error"].startswith("Orthanc POST")  # what happened first, not the REST call
    assert row["Error"].endswith("(Orthanc: HTTP 500 on POST /modalities/DOWN/echo)")
    [shown] = [e.value for e in at.error if "did not answer C-ECHO" in e.value]
    assert shown == f"**DOWN** did not answer C-ECHO: {row['Error']}"


def test_the_add_form_is_empty_after_a_destination_is_added(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    at = open_page("destinations", as_="admin")
    # A refused add keeps what was typed, to be corrected.
    at.text_input(key="add_name").input("PACS9")
    at.text_input(key="add_aet").input("PACS9")
    at.text_input(key="add_host").input("not a host!")
    at.text_input(key="add_port").input("11190")
    at.form_submit_button[0].click().run()
    assert at.text_input(key="add_name").value == "PACS9" and at.error
    at.text_input(key="add_host").input("127.0.0.1")
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert "PACS9 saved" in at.success[0].value
    assert [at.text_input(key=k).value for k in ("add_name", "add_aet", "add_host", "add_port")] == ["", "", "", "104"]


def test_the_rules_editor_shows_the_draft_against_the_active_file(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    at = open_page("rules", as_="admin")
    assert "None yet" in captions(at)
    original = at.text_area(key="rules_draft").value
    first_rule = next(line for line in original.splitlines() if line.strip().startswith("- name:"))
    at.text_area(key="rules_draft").input(original.replace(first_rule, first_rule + "-renamed", 1)).run()
    [diff] = [c for c in at.code if c.language == "diff"]
    name = app_env.settings.routing_rules.name
    assert f"--- {name} (active file)" in diff.value and f"+++ {name} (your draft)" in diff.value
    assert f"\n-{first_rule}\n" in diff.value and f"\n+{first_rule}-renamed\n" in diff.value
