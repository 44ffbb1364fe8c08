"""Destinations: listing with stats, validation, add/edit/delete in Orthanc, C-ECHO, roles."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from testkit import app_flows
from testkit.dicom_peers import StorageSCP
from testkit.harness.ports import free_port
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, table_rows

pytestmark = pytest.mark.integration


def fill_add(at: AppTest, name: str, aet: str, host: str, port: str) -> AppTest:
    at.text_input(key="add_name").input(name)
    at.text_input(key="add_aet").input(aet)
    at.text_input(key="add_host").input(host)
    at.text_input(key="add_port").input(port)
    next(b for b in at.form_submit_button if b.label == "Add destination").click()
    at.run()
    assert_clean(at)
    return at


def orthanc_modalities(app_env: AppEnv) -> dict:
    return app_env.orthanc.rest.get("/modalities", expand="")


def test_list_marks_env_destinations_and_shows_recent_record(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    port = free_port()
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", port)
    app_env.orthanc.rest.put_modality("MODLINK", "MODLINK", port)
    app_env.reconfigure(MODALITY_LPCHROUTER=f"LPCHROUTER|127.0.0.1|{port}",
                        MODALITY_MERCURE=f"MERCURE|127.0.0.1|{port}")
    rows = {r["Name"]: r for r in table_rows(open_page("destinations", as_="viewer"), "Defined in")}
    assert rows["LPCHROUTER"]["Defined in"] == ".env"
    assert rows["MODLINK"]["Defined in"] == "app"
    assert rows["MERCURE (AI node)"]["Defined in"].startswith(".env (missing in Orthanc")
    # LPCHROUTER: one delivery succeeded (study 1), one attempt failed for good (study 3).
    lpch = rows["LPCHROUTER"]
    assert lpch["Success rate (7 d, attempts)"] == "50% of 2"
    assert "connection refused" in lpch["Last error"]
    assert "queued 1" in lpch["Open jobs"] and "dead 1" in lpch["Open jobs"]
    assert rows["MODLINK"]["Last error"] == "timeout"


def test_add_validates_and_changes_nothing_on_bad_values(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    at = open_page("destinations")
    for name, aet, host, port, problem in (
        ("PACS2", "A" * 17, "127.0.0.1", "104", "at most 16 characters"),
        ("PACS2", "BAD\\AET", "127.0.0.1", "104", "may only hold"),
        ("PACS2", "PACS2", "bad host!", "104", "not an IP address or host name"),
        ("PACS2", "PACS2", "127.0.0.1", "70000", "between 1 and 65535"),
        ("PACS2", "PACS2", "127.0.0.1", "abc", "whole number"),
        ("bad name", "PACS2", "127.0.0.1", "104", "destination name"),
    ):
        fill_add(at, name, aet, host, port)
        assert any(problem in e.value for e in at.error), (problem, [e.value for e in at.error])
    assert orthanc_modalities(app_env) == {}
    assert app_env.audit("destination.add") == []


def test_add_edit_delete_take_effect_in_orthanc_and_are_audited(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    at = fill_add(open_page("destinations"), "PACS2", "PACS2_AE", "127.0.0.1", "11104")
    assert any("PACS2 saved" in s.value for s in at.success)
    assert orthanc_modalities(app_env)["PACS2"]["AET"] == "PACS2_AE"
    assert orthanc_modalities(app_env)["PACS2"]["Port"] == 11104
    add = app_env.audit("destination.add")[0]
    assert (add.actor, add.target, add.after) == (
        USERS["admin"], "destination:PACS2", {"aet": "PACS2_AE", "host": "127.0.0.1", "port": 11104, "retrieve": []})
    # By default a destination may echo and store, never query/retrieve (issue 15).
    flags = orthanc_modalities(app_env)["PACS2"]
    assert [flags[k] for k in ("AllowEcho", "AllowStore", "AllowFind", "AllowGet", "AllowMove")] == [
        True, True, False, False, False]
    fill_add(at, "PACS2", "OTHER", "127.0.0.1", "104")  # a duplicate name is refused
    assert any("already exists" in e.value for e in at.error)

    at.selectbox(key="edit_target").set_value("PACS2")
    at.run()
    at.text_input(key="edit_port_PACS2").input("11105")
    at.text_input(key="edit_aet_PACS2").input("PACS2_NEW")
    next(b for b in at.form_submit_button if b.label == "Save changes").click()
    at.run()
    assert_clean(at)
    assert orthanc_modalities(app_env)["PACS2"]["Port"] == 11105
    assert orthanc_modalities(app_env)["PACS2"]["AET"] == "PACS2_NEW"
    edit = app_env.audit("destination.edit")[0]
    assert edit.before["port"] == 11104 and edit.after["port"] == 11105
    # Query/retrieve is enabled per service, and only for a host given as an IP address.
    at.multiselect(key="edit_retrieve_PACS2").set_value(["find"])
    at.text_input(key="edit_host_PACS2").input("pacs.example")
    next(b for b in at.form_submit_button if b.label == "Save changes").click()
    at.run()
    assert any("needs the host as an IP address" in e.value for e in at.error)
    at.text_input(key="edit_host_PACS2").input("127.0.0.1")
    next(b for b in at.form_submit_button if b.label == "Save changes").click()
    at.run()
    assert_clean(at)
    assert [orthanc_modalities(app_env)["PACS2"][k] for k in ("AllowFind", "AllowGet", "AllowMove")] == [
        True, False, False]
    assert app_env.audit("destination.edit")[1].after["retrieve"] == ["find"]
    at.multiselect(key="edit_retrieve_PACS2").set_value([])
    next(b for b in at.form_submit_button if b.label == "Save changes").click()
    at.run()
    at.text_input(key="edit_port_PACS2").input("0")
    next(b for b in at.form_submit_button if b.label == "Save changes").click()
    at.run()
    assert any("between 1 and 65535" in e.value for e in at.error)
    assert orthanc_modalities(app_env)["PACS2"]["Port"] == 11105

    at.selectbox(key="delete_target").set_value("PACS2")
    at.button(key="delete_destination").click()
    at.run()
    assert "Delete PACS2 from Orthanc?" in at.warning[0].value
    assert "PACS2" in orthanc_modalities(app_env)  # nothing happens before confirmation
    at.button(key="delete_destination_yes").click()
    at.run()
    assert "PACS2" not in orthanc_modalities(app_env)
    assert app_env.audit("destination.delete")[0].before == {"aet": "PACS2_NEW", "host": "127.0.0.1", "port": 11105,
                                                             "retrieve": []}


def test_echo_one_and_all_with_latency_and_errors(
    app_env: AppEnv, pacs: StorageSCP, open_page: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    app_env.orthanc.rest.put_modality("DOWN", "DOWN", free_port())
    at = open_page("destinations", as_="operator")
    at.selectbox(key="echo_target").set_value("PACS")
    at.button(key="echo_one").click()
    at.run()
    assert_clean(at)
    [one] = table_rows(at, "Latency (ms)")
    assert one["Destination"] == "PACS" and one["Result"] == "ok" and one["Latency (ms)"] > 0
    at.button(key="echo_all").click()
    at.run()
    results = {r["Destination"]: r for r in table_rows(at, "Latency (ms)")}
    assert results["PACS"]["Result"] == "ok"
    assert results["DOWN"]["Result"] == "FAILED" and "HTTP 500" in results["DOWN"]["Error"]
    # An operator may echo but not change destinations.
    assert not [b for b in at.form_submit_button if b.label == "Add destination"]
    assert "needs the admin role" in " ".join(c.value for c in at.caption)


def test_a_viewer_can_only_look(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    app_env.orthanc.rest.put_modality("PACS", "PACS", free_port())
    at = open_page("destinations", as_="viewer")
    assert at.button(key="echo_one").disabled and at.button(key="echo_all").disabled
    assert not at.form_submit_button
    assert [r["Name"] for r in table_rows(at, "Defined in")] == ["PACS"]


def test_orthanc_down_is_said_plainly(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    app_env.reconfigure(ORTHANC_WEB_PORT=str(free_port()))
    at = open_page("destinations")
    assert "Orthanc is unavailable" in at.error[0].value
