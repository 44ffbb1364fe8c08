"""The workflow API (api/) as a real uvicorn process, on a real QI database and the real Orthanc.

One API process and one database serve the whole module. Studies are recorded with
core.recorder through testkit/app_flows.py (as the worker writes them); tokens are made
with core.auth. Every read is compared with the core function the app calls, so the
API cannot drift from the app; every write is checked in the database and the audit
log. No worker runs here (it would send the seeded jobs): /health says the worker is
down, and test_api_monitor.py runs one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from api.app import create_app
from api.models import QiRows
from core import auth, qi, queries, reports
from core.db import make_engine
from core.qi import QiFilter
from core.settings import Settings, settings_from_values
from core.states import AuditSource, Role
from ops import pgcluster
from testkit import app_flows
from testkit.harness.api_proc import ApiProcess
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, PostgresServer

pytestmark = pytest.mark.integration

MASK = queries.MASK
ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


@dataclass
class ApiStack:
    api: ApiProcess
    engine: Engine
    settings: Settings
    flows: dict[str, app_flows.Flow]
    tokens: dict[str, str] = field(default_factory=dict)  # role or name -> raw token
    seeded: int = 0

    def client(self, who: str | None = None) -> httpx.Client:
        return self.api.client(self.tokens[who] if who else None)

    def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        with self.client(who) as http:
            return http.get(path, params=params)

    def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        with self.client(who) as http:
            return http.post(path, json=body)

    def audit(self, action: str, target: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text("SELECT actor, source, before, after FROM audit_log "
                                          "WHERE action = :a AND target = :t ORDER BY id"), {"a": action, "t": target}))

    def seed(self) -> dict[str, app_flows.Flow]:
        """Another standard set of studies (one per state) for a test that changes them."""
        self.seeded += 1
        with self.engine.begin() as conn:
            return app_flows.standard_set(conn, datetime.now(UTC), base=100 * self.seeded)


@pytest.fixture(scope="module")
def stack(pg_server: PostgresServer, qi_template: str, hub_values: dict[str, str], orthanc: OrthancServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    values = {**hub_values, "QI_DB": f"{hub_values['QI_DB']}_api_{uuid.uuid4().hex[:10]}",
              "ROUTING_API_PORT": str(free_port()), "WORKER_HEALTH_PORT": str(free_port())}
    settings = settings_from_values(values)
    pg_server.disconnect_all(qi_template)
    pg_server.create_database(settings.qi_db, owner=settings.postgres_user, template=qi_template)
    engine = make_engine(settings.pg_url())
    api = ApiProcess(values, tmp_path_factory.mktemp("api"))
    try:
        with pg_server.connect() as conn:
            pgcluster.restrict_qi_database(conn, settings.qi_db)
        assert orthanc.rest is not None
        orthanc.rest.reset()
        for name in ("MERCURE", "LPCHROUTER", "LPCHTROUTER", "MODLINK"):
            orthanc.rest.put_modality(name, name, free_port())
        now = datetime.now(UTC)
        with engine.begin() as conn:
            qi.sync_qi_settings(conn, settings)
            flows = app_flows.standard_set(conn, now)
            tokens = {role.value: auth.create_token(conn, f"api-{role}", role, actor="test",
                                                    source=AuditSource.SETUP)[1] for role in ROLES}
            tokens["revoked"] = auth.create_token(conn, "api-revoked", Role.ADMIN, actor="test",
                                                  source=AuditSource.SETUP)[1]
            auth.revoke_token(conn, "api-revoked", actor="test", source=AuditSource.SETUP)
            past = now - timedelta(days=2)
            tokens["expired"] = auth.create_token(conn, "api-expired", Role.ADMIN, actor="test",
                                                  source=AuditSource.SETUP, expires_at=past + timedelta(days=1),
                                                  now=past)[1]
        api.start()
        yield ApiStack(api, engine, settings, flows, tokens)
    finally:
        api.stop()
        engine.dispose()
        pg_server.drop_database(settings.qi_db)


def _seeded_ids(stack: ApiStack, flows: dict[str, app_flows.Flow] | None = None) -> set[int]:
    return {f.study_id for f in (flows or stack.flows).values()}


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_are_stored_as_sha256_only_and_audited(stack: ApiStack) -> None:
    raw = stack.tokens["viewer"]
    with stack.engine.connect() as conn:
        row = conn.execute(text("SELECT token_hash FROM api_tokens WHERE name = 'api-viewer'")).one()
        dumped = conn.execute(text("SELECT string_agg(t::text, '|') FROM api_tokens t")).scalar_one()
        audit_text = conn.execute(text("SELECT string_agg(a::text, '|') FROM audit_log a")).scalar_one()
    assert row.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in dumped and raw not in audit_text
    created = stack.audit("token.create", "token:api-viewer")
    assert [(a.actor, a.source, a.after["role"]) for a in created] == [("test", "setup", "viewer")]
    assert [a.actor for a in stack.audit("token.revoke", "token:api-revoked")] == ["test"]
    with stack.engine.begin() as conn:
        for name, role, kwargs, message in (
            ("api-viewer", Role.VIEWER, {}, "already exists"),
            ("bad name", Role.VIEWER, {}, "token name"),
            ("x", "superuser", {}, "role"),
            ("x", Role.VIEWER, {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "future"),
        ):
            with pytest.raises(auth.TokenError, match=message):
                auth.create_token(conn, name, role, actor="test", source=AuditSource.SETUP, **kwargs)
        with pytest.raises(auth.TokenError, match="already revoked"):
            auth.revoke_token(conn, "api-revoked", actor="test", source=AuditSource.SETUP)
        with pytest.raises(auth.TokenError, match="does not exist"):
            auth.revoke_token(conn, "nobody", actor="test", source=AuditSource.SETUP)
        assert not auth.verify_token(conn, raw[:-1] + ("A" if raw[-1] != "A" else "B")).ok
        assert not auth.verify_token(conn, "é" + raw).ok
        assert auth.verify_token(conn, raw).ok


def test_whoami_and_last_used(stack: ApiStack) -> None:
    for role in ROLES:
        answer = stack.get(role, "/v1/whoami")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": f"api-{role}", "role": role, "sees_patient_data": role != Role.VIEWER}
        assert answer.headers["cache-control"] == "no-store"  # patient data must not stay in caches
    with stack.engine.connect() as conn:
        token = auth.get_token(conn, "api-operator")
    assert token is not None and token.last_used_at is not None


def _protected_routes() -> list[tuple[str, str]]:
    schema = create_app().openapi()
    routes = [(method.upper(), path.replace("{study_id}", "1").replace("{job_id}", "1").replace("{name}", "PACS"))
              for path, ops in schema["paths"].items() for method in ops if path != "/health"]
    return [*routes, ("GET", "/openapi.json"), ("GET", "/v1/no-such-route")]


PROTECTED = _protected_routes()


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_health_needs_a_valid_token(stack: ApiStack, method: str, path: str) -> None:
    def ask(headers: dict[str, str]) -> httpx.Response:
        return httpx.request(method, stack.api.url + path, headers=headers, timeout=30)

    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer hub_not-a-token"}, {"Authorization": "Bearer " + "x" * 5000}):
        answer = ask(headers)
        assert answer.status_code == 401, (headers.get("Authorization", "")[:20], answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["cache-control"] == "no-store"
        assert answer.json()["detail"]
    for name, word in (("revoked", "revoked"), ("expired", "expired")):
        answer = ask({"Authorization": f"Bearer {stack.tokens[name]}"})
        assert answer.status_code == 401 and word in answer.json()["detail"], answer.text


WRITES = [(m, p) for m, p in PROTECTED if m == "POST"]
READS = [(m, p) for m, p in PROTECTED if m == "GET" and p != "/v1/no-such-route"]


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_writes_need_the_operator_role(stack: ApiStack, method: str, path: str) -> None:
    before = _audit_count(stack)
    answer = httpx.request(method, stack.api.url + path, json={"destination": "LPCHROUTER"},
                           headers={"Authorization": f"Bearer {stack.tokens['viewer']}"}, timeout=30)
    assert answer.status_code == 403, answer.text
    assert "operator role" in answer.json()["detail"]
    assert _audit_count(stack) == before, "a refused write left an audit entry"


def test_reads_need_only_a_viewer_token(stack: ApiStack) -> None:
    for _, path in READS:
        answer = stack.get("viewer", path, state="dead", stage="turnaround", key="1")
        assert answer.status_code not in (401, 403, 500), (path, answer.text)


def test_openapi_document_is_served_to_a_token_and_matches_the_app(stack: ApiStack) -> None:
    answer = stack.get("viewer", "/openapi.json")
    assert answer.status_code == 200
    assert answer.json() == create_app().openapi()
    for path in ("/docs", "/redoc"):
        assert stack.get("admin", path).status_code == 404  # no interactive docs (they load remote scripts)


def _audit_count(stack: ApiStack) -> int:
    with stack.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one())


def test_a_revoked_token_is_refused_from_its_next_request(stack: ApiStack) -> None:
    with stack.engine.begin() as conn:
        _, raw = auth.create_token(conn, "short-lived", Role.OPERATOR, actor="ada", source=AuditSource.UI)
    with stack.api.client(raw) as http:
        assert http.get("/v1/whoami").status_code == 200
        with stack.engine.begin() as conn:
            auth.revoke_token(conn, "short-lived", actor="ada", source=AuditSource.UI)
        refused = http.get("/v1/whoami")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


# --- reads -----------------------------------------------------------------------------------


def test_studies_list_masks_patient_data_for_viewers_as_the_app_does(stack: ApiStack) -> None:
    ids = _seeded_ids(stack)
    jane = stack.flows["delivered"].study_id
    seen = {}
    for role in ROLES:
        answer = stack.get(role, "/v1/studies", limit=200)
        assert answer.status_code == 200, answer.text
        rows = {s["id"]: s for s in answer.json()["studies"] if s["id"] in ids}
        assert set(rows) == ids
        seen[role] = rows
    assert {(s["patient_name"], s["patient_id"]) for s in seen[Role.VIEWER].values()} == {(MASK, MASK)}
    assert (seen[Role.OPERATOR][jane]["patient_name"], seen[Role.OPERATOR][jane]["patient_id"]) == (
        "DOE^JANE", "PID-JANE")
    assert seen[Role.ADMIN][jane]["patient_name"] == "DOE^JANE"
    viewer_text = stack.get("viewer", "/v1/studies", limit=200).text + stack.get("viewer", f"/v1/studies/{jane}").text
    assert "DOE^JANE" not in viewer_text and "PID-JANE" not in viewer_text
    assert stack.get("viewer", f"/v1/studies/{jane}").json()["study"]["patient_name"] == MASK
    assert stack.get("operator", f"/v1/studies/{jane}").json()["study"]["patient_name"] == "DOE^JANE"
    # Searching by patient id would tell a viewer whether a patient is here: refused as in the app.
    refused = stack.get("viewer", "/v1/studies", patient_id="PID-JANE")
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    found = stack.get("operator", "/v1/studies", patient_id="PID-JANE").json()["studies"]
    assert [s["id"] for s in found] == [jane]


def test_studies_list_equals_the_apps_query_with_stages(stack: ApiStack) -> None:
    answer = stack.get("operator", "/v1/studies", limit=200).json()["studies"]
    with stack.engine.connect() as conn:
        page = queries.search_studies(conn, queries.StudyFilter(), limit=200, show_phi=True)
        expected_stages = {}
        for row in page.rows:
            events = queries.study_events(conn, row["id"])
            jobs = queries.study_jobs(conn, row["id"])
            expected_stages[row["id"]] = queries.study_stages(row, events, jobs, stack.settings.ai_modality)
    assert [s["id"] for s in answer] == [r["id"] for r in page.rows]
    for study, row in zip(answer, page.rows, strict=True):
        assert (study["status"], study["accession_number"], study["series"]) == (
            row["status"], row["accession_number"], row["series"])
        assert ", ".join(study["destinations"]) == (row["destinations"] or "")
        stages = expected_stages[row["id"]]
        assert [(s["name"], s["note"]) for s in study["stages"]] == [(s.name, s.note) for s in stages]
        assert [s["at"] is None for s in study["stages"]] == [s.at is None for s in stages]
    delivered = next(s for s in answer if s["id"] == stack.flows["delivered"].study_id)
    assert delivered["status"] == "delivered" and all(s["at"] for s in delivered["stages"])
    assert [s["name"] for s in delivered["stages"]] == [
        "Study Received", f"Sent to {stack.settings.ai_modality}", "AI Results Back", "Routed to Destinations"]


def test_studies_filters_and_pages(stack: ApiStack) -> None:
    ids = _seeded_ids(stack)
    flows = stack.flows

    def listed(**params: Any) -> set[int]:
        answer = stack.get("viewer", "/v1/studies", limit=200, **params)
        assert answer.status_code == 200, answer.text
        return {s["id"] for s in answer.json()["studies"]} & ids

    assert listed(status="delivered") == {flows["delivered"].study_id}
    assert listed(status="unrouted") == {flows["unrouted"].study_id}
    assert listed(destination="MODLINK") == {flows["retrying"].study_id}
    assert listed(destination="NO-SUCH-DESTINATION") == set()
    assert listed(modality="ct") == {flows["dead"].study_id}  # upper-cased, as the app does
    assert listed(source_aet="MODALITY2") == {flows["retrying"].study_id}
    assert listed(accession=flows["queued"].accession) == {flows["queued"].study_id}
    today = datetime.now(stack.settings.zone).date()
    assert listed(received_from=today - timedelta(days=1), received_to=today + timedelta(days=1)) == ids
    assert listed(received_from=today + timedelta(days=1)) == set()
    assert listed(received_to=today - timedelta(days=2)) == set()

    pages: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = stack.get("viewer", "/v1/studies", **params).json()
        assert len(body["studies"]) <= 2
        pages += [s["id"] for s in body["studies"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == len(set(pages)) and ids <= set(pages)

    lookup = stack.get("viewer", "/v1/studies/lookup", key=flows["dead"].accession).json()
    assert lookup["ids"] == [flows["dead"].study_id]
    assert stack.get("viewer", "/v1/studies/lookup", key=flows["dead"].study_uid).json()["ids"] == [
        flows["dead"].study_id]


def test_study_detail_and_timeline_equal_the_study_detail_page(stack: ApiStack) -> None:
    flow = stack.flows["delivered"]
    detail = stack.get("viewer", f"/v1/studies/{flow.study_id}").json()
    timeline = stack.get("viewer", f"/v1/studies/{flow.study_id}/timeline").json()
    with stack.engine.connect() as conn:
        events = queries.study_events(conn, flow.study_id)
        series = queries.study_series(conn, flow.study_id)
        jobs = queries.study_jobs(conn, flow.study_id)
    assert detail["study"]["study_uid"] == flow.study_uid and detail["study"]["status"] == "delivered"
    assert [s["series_uid"] for s in detail["series"]] == [s["series_uid"] for s in series]
    assert [(j["id"], j["destination"], j["state"]) for j in detail["jobs"]] == [
        (j["id"], j["destination"], j["state"]) for j in jobs]
    assert {j["destination"] for j in detail["jobs"]} == {"MERCURE", "LPCHROUTER", "LPCHTROUTER"}
    assert [e["id"] for e in timeline["events"]] == [e["id"] for e in events]
    assert [e["type"] for e in timeline["events"]][:2] == ["received", "stable"]
    assert timeline["stages"] == detail["stages"] and timeline["status"] == "delivered"
    missing = stack.get("viewer", "/v1/studies/999999999")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_jobs_by_state_and_one_job(stack: ApiStack) -> None:
    dead_job = stack.flows["dead"].jobs["delivery:LPCHROUTER"]
    body = stack.get("viewer", "/v1/jobs", state="dead").json()
    assert dead_job in [j["id"] for j in body["jobs"]]
    assert all(j["state"] == "dead" for j in body["jobs"])
    with stack.engine.connect() as conn:
        assert body["counts"] == queries.job_state_counts(conn)
    failed = stack.get("viewer", "/v1/jobs", state="failed", destination="MODLINK").json()["jobs"]
    assert stack.flows["retrying"].jobs["delivery:MODLINK"] in [j["id"] for j in failed]
    assert {j["destination"] for j in failed} == {"MODLINK"}
    assert stack.get("viewer", "/v1/jobs", state="failed", purpose="ai").json()["jobs"] == []
    first = stack.get("viewer", "/v1/jobs", state="succeeded", limit=2).json()
    assert len(first["jobs"]) == 2 and first["next_before_id"] == first["jobs"][-1]["id"]
    older = stack.get("viewer", "/v1/jobs", state="succeeded", before_id=first["next_before_id"]).json()["jobs"]
    assert older and all(j["id"] < first["next_before_id"] for j in older)
    with stack.engine.connect() as conn:
        succeeded = queries.list_jobs(conn, queries.JobFilter(state="succeeded"), limit=200).rows
    assert [j["id"] for j in first["jobs"] + older] == [j["id"] for j in succeeded]
    one = stack.get("viewer", f"/v1/jobs/{dead_job}").json()
    assert (one["id"], one["state"], one["destination"], one["payload"]) == (dead_job, "dead", "LPCHROUTER", "matched")
    assert "connection refused" in one["last_error"]
    assert stack.get("viewer", "/v1/jobs/999999999").status_code == 404


def test_destinations_with_their_holds(stack: ApiStack) -> None:
    body = stack.get("viewer", "/v1/destinations").json()
    assert body["orthanc_reachable"] is True
    by_name = {d["name"]: d for d in body["destinations"]}
    assert {"MERCURE", "LPCHROUTER", "LPCHTROUTER", "MODLINK"} <= set(by_name)
    assert by_name["MERCURE"]["ai_node"] and not by_name["LPCHROUTER"]["ai_node"]
    with stack.engine.connect() as conn:
        states = queries.destination_states(conn, by_name)
    for name, state in states.items():
        assert by_name[name]["jobs_waiting"] == state.jobs_waiting
        assert by_name[name]["held"] == state.held
    one = stack.get("viewer", "/v1/destinations/MODLINK").json()
    assert one["name"] == "MODLINK" and one["in_orthanc"] is True
    assert stack.get("viewer", "/v1/destinations/NOWHERE").status_code == 404


# --- QI and reports --------------------------------------------------------------------------

QI_CALLS: list[tuple[str, dict[str, Any], Any, dict[str, Any]]] = [
    ("stage-stats", {"stage": "turnaround"}, qi.stage_stats, {"grain": "all", "group": "none", "stages": ["turnaround"]}),
    ("stage-stats", {"grain": "day", "group": "destination"}, qi.stage_stats, {"grain": "day", "group": "destination"}),
    ("stage-histogram", {"stage": "turnaround", "bin_s": 30, "max_s": 600}, qi.stage_histogram,
     {"stage": "turnaround", "bin_s": 30, "max_s": 600}),
    ("sla", {}, qi.sla_compliance, {"grain": "all", "group": "none"}),
    ("study-outcomes", {"grain": "day"}, qi.study_outcomes, {"grain": "day", "group": "none"}),
    ("delivery-outcomes", {}, qi.delivery_outcomes, {"grain": "all"}),
    ("delivery-times", {}, qi.delivery_times, {"grain": "all"}),
    ("attempt-failures", {}, qi.attempt_failures, {"grain": "day", "by_destination": True}),
    ("top-errors", {"limit": 5}, qi.top_errors, {"limit": 5}),
    ("ai-outcomes", {}, qi.ai_outcomes, {"grain": "all", "group": "none"}),
    ("ai-overdue", {}, qi.ai_overdue_studies, {"limit": 200}),
    ("volume", {"group": "modality"}, qi.volume, {"grain": "day", "group": "modality"}),
    ("volume-heatmap", {}, qi.volume_heatmap, {}),
    ("daily-summary", {}, qi.daily_summary, {}),
]


def _qi_window(stack: ApiStack) -> tuple[date, date]:
    today = datetime.now(stack.settings.zone).date()
    return today - timedelta(days=1), today


@pytest.mark.parametrize(("report", "params", "function", "kwargs"), QI_CALLS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(QI_CALLS)])
def test_qi_endpoints_return_the_sql_functions_rows(stack: ApiStack, report: str, params: dict[str, Any],
                                                    function: Any, kwargs: dict[str, Any]) -> None:
    from api.qi_routes import records

    start, end = _qi_window(stack)
    answer = stack.get("viewer", f"/v1/qi/{report}", start=start.isoformat(), end=end.isoformat(), **params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["report"], body["start"], body["end"]) == (report, start.isoformat(), end.isoformat())
    with stack.engine.connect() as conn, conn.begin():
        expected = records(function(conn, QiFilter(start, end), stack.settings.zone, **kwargs))
    expected_json = QiRows(report=report, start=start, end=end, rows=expected).model_dump(mode="json")["rows"]
    assert len(body["rows"]) == len(expected_json)
    assert body["rows"] or report == "ai-overdue", "the seeded studies count in every other report"
    for got, want in zip(body["rows"], expected_json, strict=True):
        for moving in ("waited_s",):  # the time since the AI send, for a result still missing: now() moved
            assert (got.pop(moving, None) is None) == (want.pop(moving, None) is None)
        assert got == want


def test_qi_figures_count_the_seeded_studies(stack: ApiStack) -> None:
    start, end = _qi_window(stack)
    rows = stack.get("viewer", "/v1/qi/stage-stats", start=start, end=end, stage="turnaround").json()["rows"]
    assert len(rows) == 1 and rows[0]["stage"] == "turnaround" and rows[0]["n"] >= 1
    mercure = stack.get("viewer", "/v1/qi/delivery-outcomes", start=start, end=end, destination="MERCURE").json()
    assert {r["destination"] for r in mercure["rows"]} <= {"MERCURE"}
    histogram = stack.get("viewer", "/v1/qi/stage-histogram", start=start, end=end, stage="turnaround", bin_s=60,
                          max_s=60).json()["rows"]
    assert histogram and histogram[-1]["bin_end"] is None  # the open-ended last bin (infinity in SQL)
    definitions = stack.get("viewer", "/v1/qi/definitions", start=start, end=end).json()
    assert definitions["definitions"] == qi.DEFINITIONS
    assert definitions["settings"]["sla_turnaround_s"] == stack.settings.sla_turnaround_s
    assert "MODALITY1" in definitions["filter_options"]["source_aet"]


def test_reports_are_the_exports_byte_for_byte(stack: ApiStack, tmp_path: Path) -> None:
    start, end = _qi_window(stack)
    flt = QiFilter(start, end)
    with stack.engine.connect() as conn, conn.begin():
        reports.export_studies(conn, flt, stack.settings.zone, "csv", tmp_path / "studies.csv")
    with stack.engine.connect() as conn, conn.begin():
        reports.export_summary(conn, flt, stack.settings.zone, "csv", tmp_path / "summary.csv")
    studies = stack.get("viewer", "/v1/reports/studies.csv", start=start, end=end)
    assert studies.status_code == 200 and studies.headers["content-type"].startswith("text/csv")
    assert f"qi-studies_{start}_{end}.csv" in studies.headers["content-disposition"]
    assert studies.content == (tmp_path / "studies.csv").read_bytes()
    assert studies.text.splitlines()[0] == ",".join(qi.STUDY_COLUMNS)
    assert stack.flows["delivered"].study_uid in studies.text
    assert "DOE^JANE" not in studies.text and "PID-JANE" not in studies.text
    summary = stack.get("viewer", "/v1/reports/daily-summary.csv", start=start, end=end)
    assert summary.status_code == 200 and summary.content == (tmp_path / "summary.csv").read_bytes()
    empty = stack.get("viewer", "/v1/reports/studies.csv", start="2001-01-01", end="2001-01-02")
    assert empty.status_code == 200 and empty.text == ",".join(qi.STUDY_COLUMNS) + "\n"


# --- writes ----------------------------------------------------------------------------------


def test_retry_and_cancel_are_audited_with_the_token_name(stack: ApiStack) -> None:
    flows = stack.seed()
    dead = flows["dead"].jobs["delivery:LPCHROUTER"]
    queued = flows["queued"].jobs["delivery:LPCHROUTER"]
    answer = stack.post("operator", f"/v1/jobs/{dead}/retry")
    assert answer.status_code == 200, answer.text
    with stack.engine.connect() as conn:
        assert queries.get_job(conn, dead)["state"] == "queued"
    [entry] = stack.audit("job.retry", f"job:{dead}")
    assert (entry.actor, entry.source, entry.before["state"]) == ("api-operator", AuditSource.API, "dead")
    again = stack.post("operator", f"/v1/jobs/{dead}/retry")
    assert again.status_code == 409 and again.json()["detail"] == (
        f"job {dead} is queued; only failed, dead or cancelled jobs can be retried")
    assert len(stack.audit("job.retry", f"job:{dead}")) == 1

    cancelled = stack.post("admin", f"/v1/jobs/{queued}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    [entry] = stack.audit("job.cancel", f"job:{queued}")
    assert (entry.actor, entry.source) == ("api-admin", "api")
    with stack.engine.connect() as conn:
        assert queries.get_job(conn, queued)["state"] == "cancelled"
        types = [e["type"] for e in queries.study_events(conn, flows["queued"].study_id)]
    assert "cancelled" in types
    assert stack.post("operator", f"/v1/jobs/{queued}/cancel").status_code == 409
    assert stack.post("operator", "/v1/jobs/999999999/retry").status_code == 404
    assert stack.post("operator", "/v1/jobs/999999999/cancel").status_code == 404


def test_resend_queues_a_new_job(stack: ApiStack) -> None:
    flows = stack.seed()
    study = flows["delivered"].study_id
    answer = stack.post("operator", f"/v1/studies/{study}/resend", {"destination": "MODLINK", "kind": "ai_result"})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["job_id"]
    with stack.engine.connect() as conn:
        job = queries.get_job(conn, job_id)
        series = conn.execute(text("SELECT count(*) FROM job_series WHERE job_id = :j AND is_resend"),
                              {"j": job_id}).scalar_one()
    assert (job["study_id"], job["destination"], job["state"], job["payload"]) == (
        study, "MODLINK", "queued", "ai_results")
    assert series == 1
    [entry] = stack.audit("study.resend", f"study:{study}")
    assert (entry.actor, entry.source, entry.after["job"]) == ("api-operator", "api", job_id)
    unknown = stack.post("operator", f"/v1/studies/{study}/resend", {"destination": "NOWHERE"})
    assert unknown.status_code == 404 and "NOWHERE" in unknown.json()["detail"]
    assert stack.post("operator", "/v1/studies/999999999/resend", {"destination": "MODLINK"}).status_code == 404
    assert stack.post("operator", f"/v1/studies/{study}/resend", {"destination": "MODLINK", "kind": "x"}
                      ).status_code == 422
    assert stack.post("operator", f"/v1/studies/{study}/resend", {}).status_code == 422
    assert len(stack.audit("study.resend", f"study:{study}")) == 1


def test_hold_and_release_a_destination(stack: ApiStack) -> None:
    held = stack.post("operator", "/v1/destinations/LPCHTROUTER/hold", {"reason": "PACS upgrade"})
    assert held.status_code == 200, held.text
    state = stack.get("viewer", "/v1/destinations/LPCHTROUTER").json()
    assert (state["held"], state["kind"], state["held_by"], state["reason"]) == (
        True, "operator", "api-operator", "PACS upgrade")
    assert state["summary"].startswith("on hold by api-operator since")
    [entry] = stack.audit("destination.hold", "destination:LPCHTROUTER")
    assert (entry.actor, entry.source, entry.after["reason"]) == ("api-operator", "api", "PACS upgrade")
    again = stack.post("operator", "/v1/destinations/LPCHTROUTER/hold")
    assert again.status_code == 409 and "already on hold" in again.json()["detail"]
    released = stack.post("admin", "/v1/destinations/LPCHTROUTER/release")
    assert released.status_code == 200, released.text
    assert stack.get("viewer", "/v1/destinations/LPCHTROUTER").json()["held"] is False
    [entry] = stack.audit("destination.release", "destination:LPCHTROUTER")
    assert (entry.actor, entry.source) == ("api-admin", "api")
    not_held = stack.post("operator", "/v1/destinations/LPCHTROUTER/release")
    assert not_held.status_code == 409 and "not held" in not_held.json()["detail"]
    assert stack.post("operator", "/v1/destinations/NOWHERE/hold").status_code == 404
    assert stack.post("operator", "/v1/destinations/NOWHERE/release").status_code == 404


# --- hostile parameters ----------------------------------------------------------------------

HOSTILE: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, params or body, expected status, a word of the message)
    ("GET", "/v1/studies", {"received_from": "2024-13-45"}, 422, "date"),
    ("GET", "/v1/studies", {"received_from": "yesterday"}, 422, "date"),
    ("GET", "/v1/studies", {"received_from": "0001-01-01"}, 400, "between"),
    ("GET", "/v1/studies", {"received_to": "9999-12-31"}, 400, "between"),
    ("GET", "/v1/studies", {"received_from": "2024-05-02", "received_to": "2024-05-01"}, 400, "before"),
    ("GET", "/v1/studies", {"limit": 10**9}, 422, "less than or equal"),
    ("GET", "/v1/studies", {"limit": 0}, 422, "greater than or equal"),
    ("GET", "/v1/studies", {"limit": -5}, 422, "greater than or equal"),
    ("GET", "/v1/studies", {"limit": "1; DROP TABLE studies"}, 422, "integer"),
    ("GET", "/v1/studies", {"accession": "' OR 1=1 --"}, 200, ""),
    ("GET", "/v1/studies", {"destination": "x'); DELETE FROM studies; --"}, 200, ""),
    ("GET", "/v1/studies", {"accession": "bad\x00nul"}, 422, "pattern"),
    ("GET", "/v1/studies", {"source_aet": "A" * 5000}, 422, "at most"),
    ("GET", "/v1/studies", {"status": "pwned"}, 422, "received"),
    ("GET", "/v1/studies", {"cursor": "not-a-cursor"}, 400, "cursor"),
    ("GET", "/v1/studies", {"cursor": "MjAyNC0wMS0wMXw5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, 400, "cursor"),
    ("GET", "/v1/studies/lookup", {"key": ""}, 422, "at least"),
    ("GET", "/v1/studies/lookup", {"key": "1' UNION SELECT patient_name FROM studies --"}, 200, ""),
    ("GET", "/v1/studies/-1", {}, 422, "greater than or equal"),
    ("GET", "/v1/studies/0", {}, 422, "greater than or equal"),
    ("GET", "/v1/studies/99999999999999999999999", {}, 422, "less than or equal"),
    ("GET", "/v1/studies/1.5", {}, 422, "integer"),
    ("GET", "/v1/studies/abc/timeline", {}, 422, "integer"),
    ("GET", "/v1/jobs", {}, 422, "required"),
    ("GET", "/v1/jobs", {"state": "'; DROP TABLE routing_jobs; --"}, 422, "queued"),
    ("GET", "/v1/jobs", {"state": "dead", "before_id": -1}, 422, "greater than or equal"),
    ("GET", "/v1/jobs", {"state": "dead", "purpose": "exfiltrate"}, 422, "delivery"),
    ("GET", "/v1/jobs", {"state": "dead", "destination": "NO-SUCH-PACS"}, 200, ""),
    ("GET", "/v1/jobs/-7", {}, 422, "greater than or equal"),
    ("GET", "/v1/destinations/..%2F..%2Fetc", {}, 404, "not found"),
    ("GET", "/v1/destinations/x%00y", {}, 422, "pattern"),
    ("GET", "/v1/qi/sla", {"grain": "decade"}, 422, "day"),
    ("GET", "/v1/qi/sla", {"group": "patient_name"}, 422, "modality"),
    ("GET", "/v1/qi/sla", {"start": "2024-02-30"}, 422, "date"),
    ("GET", "/v1/qi/sla", {"start": "2024-05-02", "end": "2024-05-01"}, 400, "before"),
    ("GET", "/v1/qi/sla", {"start": "9999-12-31"}, 400, "between"),
    ("GET", "/v1/qi/volume", {"modality": ["x"] * 51}, 400, "at most 50"),
    ("GET", "/v1/qi/volume", {"modality": "CT\x01"}, 400, "control"),
    ("GET", "/v1/qi/stage-stats", {"stage": "patient_name"}, 422, "turnaround"),
    ("GET", "/v1/qi/stage-histogram", {"stage": "turnaround", "bin_s": 0}, 422, "greater than or equal"),
    ("GET", "/v1/qi/stage-histogram", {"stage": "turnaround", "bin_s": 1, "max_s": 2_000_000}, 400, "bins"),
    ("GET", "/v1/qi/stage-histogram", {"stage": "turnaround", "bin_s": "nan"}, 422, ""),
    ("GET", "/v1/qi/top-errors", {"limit": 10**12}, 422, "less than or equal"),
    ("GET", "/v1/reports/studies.csv", {"start": "0000-01-01"}, 422, "date"),
    ("POST", "/v1/jobs/-1/retry", {}, 422, "greater than or equal"),
    ("POST", "/v1/jobs/99999999999999999999/cancel", {}, 422, "less than or equal"),
    ("POST", "/v1/destinations/LPCHROUTER/hold", {"reason": "x" * 500}, 422, "at most"),
    ("POST", "/v1/destinations/LPCHROUTER/hold", {"reason": "line\nbreak"}, 422, "pattern"),
    ("POST", "/v1/destinations/a%20b/hold", {}, 422, "pattern"),
    ("POST", "/v1/studies/1/resend", {"destination": "../../x"}, 422, "pattern"),
    ("POST", "/v1/studies/1/resend", {"destination": "MODLINK", "kind": "rejected"}, 422, "ai_result"),
]


@pytest.mark.parametrize(("method", "path", "params", "status", "word"), HOSTILE,
                         ids=[f"{i}-{h[1]}" for i, h in enumerate(HOSTILE)])
def test_hostile_parameters_are_clear_4xx_never_500(stack: ApiStack, method: str, path: str, params: dict[str, Any],
                                                    status: int, word: str) -> None:
    before = _audit_count(stack)
    with stack.client("operator") as http:
        answer = http.get(path, params=params) if method == "GET" else http.post(path, json=params)
    assert answer.status_code == status, answer.text
    body = answer.json()
    if status >= 400:
        assert body["detail"], body
        assert word.lower() in str(body["detail"]).lower(), body
        assert "Traceback" not in answer.text and "SELECT" not in answer.text
        if isinstance(body["detail"], list):  # the value sent is never echoed back
            assert all(set(e) == {"loc", "msg", "type"} for e in body["detail"]), body
    assert _audit_count(stack) == before
    with stack.engine.connect() as conn:  # nothing was dropped or deleted
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar_one() >= len(stack.flows)


def test_malformed_json_bodies_are_refused(stack: ApiStack) -> None:
    with stack.client("operator") as http:
        big = http.post("/v1/destinations/LPCHROUTER/hold", content=b"{" + b" " * 200_000 + b"}",
                        headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and "at most" in big.json()["detail"]
        for content in (b"{not json", b"[]", b'{"destination": 5}', "é".encode("latin-1")):
            answer = http.post("/v1/studies/1/resend", content=content, headers={"Content-Type": "application/json"})
            assert answer.status_code in (400, 422), (content, answer.text)
            assert answer.json()["detail"]


def test_the_api_log_holds_no_patient_data_nor_tokens(stack: ApiStack) -> None:
    stack.get("operator", "/v1/studies", patient_id="PID-JANE")
    stack.get("operator", "/v1/studies", accession=stack.flows["delivered"].accession)
    stack.get("operator", f"/v1/studies/{stack.flows['delivered'].study_id}")
    log_text = stack.api.log.read_text()
    assert '"route": "/v1/studies"' in log_text and '"token": "api-operator"' in log_text
    for secret in ("DOE^JANE", "PID-JANE", stack.flows["delivered"].accession, *stack.tokens.values()):
        assert secret not in log_text, secret
