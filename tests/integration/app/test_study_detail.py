"""Study detail: timeline, series, jobs, events; retry, cancel and resend; viewer links."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from app.components.orthanc import port_open
from testkit import app_flows
from testkit.synthetic import make_study
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, frame_text, table_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def detail(open_page: Callable[..., AppTest]) -> Callable[..., AppTest]:
    def go(study_id: int, as_: str = "admin") -> AppTest:
        at = open_page("studies", as_=as_)
        at.switch_page("pages/study_detail.py")
        at.query_params["study"] = str(study_id)
        at.run()
        assert_clean(at)
        return at

    return go


def test_timeline_series_jobs_and_events(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]
) -> None:
    at = detail(flows["delivered"].study_id, as_="viewer")
    stages = table_rows(at, "Stage")
    assert [s["Stage"] for s in stages] == [
        "Study Received", "Sent to MERCURE", "AI Results Back", "Routed to Destinations"]
    assert all(s[f"Reached ({app_env.settings.tz})"] for s in stages)
    assert at.get("plotly_chart"), "the timeline chart is rendered"
    series = table_rows(at, "SeriesInstanceUID")
    assert {(s["Kind"], s["Sender AET"]) for s in series} == {("original", "MODALITY1"), ("ai_result", "MERCURE")}
    jobs = table_rows(at, "Destination")
    assert {(j["Purpose"], j["Destination"], j["State"]) for j in jobs} == {
        ("ai", "MERCURE", "succeeded"), ("delivery", "LPCHROUTER", "succeeded"),
        ("delivery", "LPCHTROUTER", "succeeded")}
    events = table_rows(at, "Type")
    assert [e["Type"] for e in events][:2] == ["received", "stable"]
    assert "ai_result_received" in {e["Type"] for e in events}
    assert "DOE^JANE" not in frame_text(at)  # viewer: masked

    pending = detail(flows["ai_pending"].study_id)
    reached = {s["Stage"]: s["Note"] for s in table_rows(pending, "Stage")}
    assert reached["AI Results Back"] == "pending" and reached["Routed to Destinations"] == "pending"


def test_dead_job_shows_its_error_and_an_operator_retries_it(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]
) -> None:
    job_id = flows["dead"].jobs["delivery:LPCHROUTER"]
    at = detail(flows["dead"].study_id, as_="operator")
    job = next(j for j in table_rows(at, "Destination") if j["Job"] == job_id)
    assert job["State"] == "dead" and "connection refused" in job["Last error"] and job["Attempts"] == 1
    at.selectbox(key="detail_job").set_value(job_id)
    at.run()
    assert at.button(key="detail_cancel").disabled is False
    at.button(key="detail_retry").click()
    at.run()
    assert_clean(at)
    assert any("Retry of job" in s.value for s in at.success)
    assert app_env.scalar("SELECT state FROM routing_jobs WHERE id = :id", id=job_id) == "queued"
    assert app_env.scalar("SELECT count(*) FROM events WHERE job_id = :id AND type = 'manual_retry'", id=job_id) == 1
    audit = app_env.audit("job.retry")
    assert [(a.actor, a.source, a.target) for a in audit] == [(USERS["operator"], "ui", f"job:{job_id}")]
    assert audit[0].before == {"state": "dead", "attempts": 1}
    assert app_env.scalar("SELECT status FROM studies WHERE id = :id", id=flows["dead"].study_id) == "delivering"


def test_operator_cancels_a_queued_job(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]
) -> None:
    job_id = flows["queued"].jobs["delivery:LPCHROUTER"]
    at = detail(flows["queued"].study_id, as_="operator")
    assert at.button(key="detail_retry").disabled  # a queued job cannot be retried
    at.button(key="detail_cancel").click()
    at.run()
    assert app_env.scalar("SELECT state FROM routing_jobs WHERE id = :id", id=job_id) == "cancelled"
    assert [a.target for a in app_env.audit("job.cancel")] == [f"job:{job_id}"]


def test_a_viewer_cannot_retry_cancel_or_resend(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", 11999)
    at = detail(flows["dead"].study_id, as_="viewer")
    for key in ("detail_retry", "detail_cancel", "detail_resend"):
        button = at.button(key=key)
        assert button.disabled, key
        assert button.help == "Needs the operator role."
        with pytest.raises(AppTestError):
            button.click()
    assert app_env.scalar("SELECT state FROM routing_jobs WHERE id = :id",
                          id=flows["dead"].jobs["delivery:LPCHROUTER"]) == "dead"
    assert app_env.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'job.%' OR action LIKE 'study.%'") == 0
    assert app_env.scalar("SELECT count(*) FROM routing_jobs") == 8


def test_resend_to_a_chosen_destination_after_confirmation(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]
) -> None:
    app_env.orthanc.rest.put_modality("MODLINK", "MODLINK", 11998)
    app_env.orthanc.rest.put_modality("LPCHROUTER", "LPCHROUTER", 11999)
    flow = flows["delivered"]
    at = detail(flow.study_id, as_="operator")
    stages = table_rows(at, "Stage")
    at.selectbox(key="detail_resend_dest").set_value("LPCHROUTER")
    at.selectbox(key="detail_resend_kind").set_value("ai_result")
    at.button(key="detail_resend").click()
    at.run()
    assert "Resend AI results only of this study to LPCHROUTER?" in at.warning[0].value
    jobs_before = app_env.scalar("SELECT count(*) FROM routing_jobs")
    at.button(key="resend_yes").click()
    at.run()
    assert_clean(at)
    assert app_env.scalar("SELECT count(*) FROM routing_jobs") == jobs_before + 1
    job = app_env.sql("SELECT id, destination, state, payload FROM routing_jobs ORDER BY id DESC LIMIT 1")[0]
    assert (job.destination, job.state, job.payload) == ("LPCHROUTER", "queued", "ai_results")
    assert app_env.sql("SELECT series_id, is_resend FROM job_series WHERE job_id = :j", j=job.id) == [
        (flow.ai_series_ids[0], True)]
    audit = app_env.audit("study.resend")[0]
    assert audit.target == f"study:{flow.study_id}" and audit.after["destination"] == "LPCHROUTER"
    # the resend is its own job: the delivered study keeps its status and its reached stages
    assert app_env.scalar("SELECT status FROM studies WHERE id = :id", id=flow.study_id) == "delivered"
    assert table_rows(detail(flow.study_id, as_="operator"), "Stage") == stages
    assert stages[3]["Stage"] == "Routed to Destinations" and stages[3]["Note"] != "pending"


@pytest.fixture
def fake_ohif(app_env: AppEnv) -> Iterator[None]:
    """Something listening on OHIF_PORT, as the OHIF static server would."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", app_env.settings.ohif_port))
        server.listen(8)
        yield


def test_viewer_links_point_at_this_study(app_env: AppEnv, detail: Callable[..., AppTest]) -> None:
    datasets = make_study(1, 1, "XR KNEE", accession="ACCLINK1")
    orthanc_study, orthanc_series = app_flows.upload(app_env.orthanc.rest, datasets)
    series_uid, series_id = next(iter(orthanc_series.items()))
    with app_env.engine.begin() as conn:
        flow = app_flows.arrive(conn, 900, datetime.now(UTC), orthanc_id=orthanc_study, series_orthanc_id=series_id)
    at = detail(flow.study_id)
    links = {b.label: b.url for b in at.link_button}
    port = app_env.settings.orthanc_web_port
    assert links["Open in Orthanc Explorer"].endswith(f":{port}/app/explorer.html#study?uuid={orthanc_study}")
    # No OHIF server here: the Orthanc web viewer plugin opens the series instead.
    assert links["Open in Orthanc web viewer"].endswith(f":{port}/web-viewer/app/viewer.html?series={series_id}")
    assert "Open in OHIF viewer" not in links


def test_ohif_link_when_the_viewer_runs(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], fake_ohif: None, detail: Callable[..., AppTest]
) -> None:
    at = detail(flows["delivered"].study_id)
    links = {b.label: b.url for b in at.link_button}
    assert links["Open in OHIF viewer"].endswith(
        f":{app_env.settings.ohif_port}/viewer?StudyInstanceUIDs={flows['delivered'].study_uid}")


def test_orthanc_pages_are_linked_for_admins_only(app_env: AppEnv, detail: Callable[..., AppTest],
                                                request: pytest.FixtureRequest) -> None:
    """Orthanc Explorer and its web viewer ask for Orthanc's password: admins only. OHIF, on the
    gateway, is for every role (it reads the app's session)."""
    datasets = make_study(1, 1, "XR HAND", accession="ACCLINK2")
    orthanc_study, orthanc_series = app_flows.upload(app_env.orthanc.rest, datasets)
    with app_env.engine.begin() as conn:
        flow = app_flows.arrive(conn, 901, datetime.now(UTC), orthanc_id=orthanc_study,
                                series_orthanc_id=next(iter(orthanc_series.values())))
    for role in ("viewer", "operator"):  # no gateway running: nothing for them
        assert [b.label for b in detail(flow.study_id, as_=role).link_button] == [], role
    request.getfixturevalue("fake_ohif")  # the gateway answers on OHIF_PORT
    port_open.clear()  # the app remembers for 30 s that nothing answered
    for role in ("viewer", "operator"):
        links = {b.label: b.url for b in detail(flow.study_id, as_=role).link_button}
        assert list(links) == ["Open in OHIF viewer"], role
        assert links["Open in OHIF viewer"].endswith(
            f":{app_env.settings.ohif_port}/viewer?StudyInstanceUIDs={flow.study_uid}")
    admin = [b.label for b in detail(flow.study_id, as_="admin").link_button]
    assert admin == ["Open in OHIF viewer", "Open in Orthanc Explorer"]


def test_find_a_study_by_accession(app_env: AppEnv, flows: dict[str, app_flows.Flow], detail: Callable[..., AppTest]) -> None:
    at = detail(flows["delivered"].study_id)
    at.text_input(key="detail_lookup").input(flows["unrouted"].accession)
    at.form_submit_button[0].click()
    at.run()
    assert flows["unrouted"].accession in at.subheader[0].value
