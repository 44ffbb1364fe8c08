"""Hostile input in every form of the app: a clear error or a literal result, never a traceback.

Each free-text field gets SQL metacharacters, LIKE wildcards, a backslash, 100 000
characters, right-to-left text and emoji, a NUL byte (PostgreSQL refuses NUL in text)
and a script tag. After each submit the page shows no exception, the tables are
intact, nothing was written that should not be, and what is stored is stored verbatim.
Streamlit escapes text in widgets and tables; no page renders user data as HTML
(test_no_page_renders_html_from_data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import recorder
from core.settings import PROJECT_ROOT
from testkit import app_flows
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, new_app, table_rows

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert(1)</script>"
HOSTILE = {
    "sql": "'; DROP TABLE studies; --",
    "percent": "%",
    "underscore": "_",
    "backslash": "\\",
    "huge": "x" * 100_000,
    "unicode": "\u202eעברית 😀 Ünïcödé",
    "nul": "A\x00B",
    "script": SCRIPT,
    "digit-like": "²",  # str.isdigit() says yes, int() says no
}
TABLES = ("studies", "series", "events", "routing_jobs", "app_users", "audit_log", "worker_state")


def counts(env: AppEnv) -> dict[str, int]:
    """Row counts of the core tables: they must survive every submit (no DROP, no stray rows)."""
    return {t: env.scalar(f"SELECT count(*) FROM {t}") for t in TABLES}  # noqa: S608 - constant names


def messages(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("error", "warning", "info", "success") for e in at.get(kind))


def submit(at: AppTest, label: str) -> AppTest:
    next(b for b in at.form_submit_button if b.label == label).click()
    at.run()
    assert_clean(at)
    return at


def test_login_form(app_env: AppEnv) -> None:
    """The login form is app/auth_routes.py's /login (an HTTP form that sets the session cookie)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from app import auth_routes

    before = counts(app_env)
    web = Starlette(routes=auth_routes.routes())
    with TestClient(web, follow_redirects=False) as client:
        for name, value in HOSTILE.items():
            for username, password in ((value, "whatever-password"), (USERS["admin"], value), (value, value)):
                form = client.get("/login")
                token = re.search(r'name="csrf" value="([^"]+)"', form.text)
                assert token
                answer = client.post("/login", data={"username": username, "password": password,
                                                     "next": value, "csrf": token.group(1)})
                assert "hub_session=" not in answer.headers.get("set-cookie", ""), name
                assert "Traceback" not in answer.text and SCRIPT not in answer.text, name
                if name == "huge":  # more than a login form holds: refused unread
                    assert answer.status_code == 400 and "could not be read" in answer.text
                else:
                    assert answer.status_code == 200, (name, answer.status_code)
                    assert "Wrong user name or password." in answer.text or "locked" in answer.text, name
                app_env.sql_exec("UPDATE app_users SET failed_logins = 0, locked_until = NULL")
    after = counts(app_env)
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}
    assert app_env.scalar("SELECT count(*) FROM app_sessions") == 0
    failures = app_env.sql("SELECT actor, target FROM audit_log WHERE action = 'auth.login_failed'")
    assert len(failures) == after["audit_log"] - before["audit_log"] == 3 * (len(HOSTILE) - 1)
    # An unknown or malformed name is never written to the audit log as the actor.
    assert {actor for actor, _ in failures} <= {"anonymous", USERS["admin"]}


def test_study_filters(app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]) -> None:
    before = counts(app_env)
    at = open_page("studies", as_="operator")
    for field in ("acc", "pid", "mod", "aet", "dest"):
        for name, value in HOSTILE.items():
            at.text_input(key=f"f_{field}").input(value)
            submit(at, "Search")
            shown = messages(at)
            if name == "nul":
                assert "The study search failed" in shown and "NUL" in shown, shown
            else:
                assert "No study matches these filters." in shown, (field, name, shown)
            at.text_input(key=f"f_{field}").input("")
    assert counts(app_env) == before


def test_study_lookup_and_url(app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]) -> None:
    at = open_page("study_detail", as_="operator")
    for name, value in {**HOSTILE, "huge-number": "9" * 30, "negative": "-1"}.items():
        at.text_input(key="detail_lookup").input(value)
        submit(at, "Find")
        shown = messages(at)
        if name == "nul":
            assert "The lookup failed" in shown and "NUL" in shown, shown
        else:
            assert "No study matches." in shown, (name, shown)
    for raw in ("²", "9" * 30, SCRIPT, "1 OR 1=1"):
        at = new_app("operator")
        at.query_params["study"] = raw
        at.run()
        at.switch_page("pages/study_detail.py").run()
        assert_clean(at)
        assert "Study detail" in at.title[0].value


def test_destination_forms(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    """Each hostile value in each field: an error naming the field and nothing changed, or
    (only where the value is a legal one) the change made with the value verbatim."""
    rest = app_env.orthanc.rest
    rest.put_modality("PACS1", "PACS1", 11112)
    before = rest.get("/modalities", expand="")
    at = open_page("destinations")
    accepted = []
    for field in ("name", "aet", "host", "port"):
        for name, value in HOSTILE.items():
            fields = {"name": "NEWPACS", "aet": "NEWPACS", "host": "127.0.0.1", "port": "104", field: value}
            for key, text in fields.items():
                at.text_input(key=f"add_{key}").input(text)
            submit(at, "Add destination")
            now = rest.get("/modalities", expand="")
            if at.error:
                assert now == before, (field, name)
                assert not at.success
            else:
                accepted.append(("add", field, name))
                assert now["NEWPACS"]["AET"] == fields["aet"]  # verbatim
                rest.delete("/modalities/NEWPACS")
            if field == "name":
                continue
            edits = {"aet": "PACS1", "host": "127.0.0.1", "port": "11112", field: value}
            for key, text in edits.items():
                at.text_input(key=f"edit_{key}_PACS1").input(text)
            submit(at, "Save changes")
            now = rest.get("/modalities", expand="")
            if at.error:
                assert now == before, (field, name)
            else:
                accepted.append(("edit", field, name))
                assert now["PACS1"]["AET"] == edits["aet"]
                rest.put_modality("PACS1", "PACS1", 11112)
    assert accepted == [("add", "aet", "underscore"), ("edit", "aet", "underscore")]  # "_" is a legal AE title
    assert rest.get("/modalities", expand="") == before
    assert len(app_env.audit("destination.add")) == len(app_env.audit("destination.edit")) == 1


def test_echo_of_a_destination_with_a_hostile_aet(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    """Orthanc's REST accepts an AE title the app would refuse; the page echoes it and shows it literally."""
    app_env.orthanc.rest.put("/modalities/EVIL", {"AET": "<b>X</b>'%", "Host": "127.0.0.1", "Port": 9})
    at = open_page("destinations", as_="operator")
    assert "<b>X</b>'%" in [r["AET"] for r in table_rows(at, "Defined in")]
    at.button(key="echo_one").click()
    at.run()
    assert_clean(at)
    [result] = table_rows(at, "Latency (ms)")
    assert (result["Destination"], result["Result"]) == ("EVIL", "FAILED")


def test_users_form(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    before = counts(app_env)
    at = open_page("users")
    for name, value in HOSTILE.items():
        at.text_input(key="user_add_name").input(value)
        submit(at, "Create user")
        if name == "underscore":  # a legal user name: created as typed
            assert f"Create {value}: done." in messages(at)
            continue
        assert "a user name has 1-64 letters" in messages(at), (name, messages(at))
    after = counts(app_env)
    assert after["app_users"] == before["app_users"] + 1
    assert app_env.scalar("SELECT count(*) FROM app_users WHERE username = '_'") == 1
    assert after["audit_log"] == before["audit_log"] + 1  # only the one creation


def test_names_with_a_final_newline_are_refused() -> None:
    """A "$" anchor matches before a final newline; the validators must not."""
    from core import auth
    from core.dicom_names import check_aet, check_host, check_modality_name

    for check, value in ((auth.check_username, "ada\n"), (check_modality_name, "PACS\n"),
                         (check_host, "pacs.example\n"), (check_aet, "PACS \n")):
        with pytest.raises((ValueError, auth.UserError)):
            check(value)


def test_audit_target_filter(app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]) -> None:
    with app_env.engine.begin() as conn:
        recorder.audit(conn, actor="ada", source="ui", action="rules.save", target=SCRIPT, after={"x": "%"})
    at = open_page("audit", as_="viewer")
    for name, value in HOSTILE.items():
        at.text_input(key="audit_target").input(value)
        submit(at, "Filter")
        shown = messages(at)
        if name == "nul":
            assert "The audit search failed" in shown and "NUL" in shown
        elif name == "script":
            [row] = table_rows(at, "Action")
            assert row["Target"] == SCRIPT  # exact match, shown verbatim
        else:
            assert "No audit entry matches these filters." in shown, (name, shown)


@pytest.fixture
def rules_path(app_env: AppEnv, tmp_path: Path) -> Path:
    path = tmp_path / "rules" / "routing.yml"
    path.parent.mkdir()
    path.write_text((PROJECT_ROOT / "config" / "routing.example.yml").read_text())
    app_env.reconfigure(ROUTING_RULES=str(path))
    return path


def test_rules_editor_and_dry_run(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], rules_path: Path, open_page: Callable[..., AppTest]
) -> None:
    shipped = rules_path.read_text()
    at = open_page("rules")
    for name, value in HOSTILE.items():
        at.text_area(key="rules_draft").input(value)
        at.run()
        assert_clean(at)
        assert "Not valid, so it cannot be saved" in messages(at), name
        assert at.button(key="rules_save").disabled
        at.text_input(key="dry_study_id").input(value)
        at.run()
        assert_clean(at)
    assert rules_path.read_text() == shipped
    # A valid file whose rule name and condition are hostile text is saved byte for byte.
    hostile_rule = ("version: 1\nrules:\n  - name: \"" + SCRIPT + " '; DROP TABLE studies; -- 😀\"\n"
                    "    when: {kind: original, all: [{tag: StudyDescription, contains: \"%_\\\\\"}]}\n"
                    "    then: {deliver_to: [PACS], payload: matched}\n")
    at.text_area(key="rules_draft").input(hostile_rule)
    at.run()
    assert "Valid: 1 rule(s)" in messages(at)
    at.button(key="rules_save").click()
    at.run()
    assert_clean(at)
    assert rules_path.read_text() == hostile_rule
    [saved] = app_env.audit("rules.save")
    assert SCRIPT in saved.after["diff"]


def test_qi_filters_and_exports(app_env: AppEnv, open_page: Callable[..., AppTest]) -> None:
    """Dimension values from hostile DICOM are offered and applied literally; odd date ranges are harmless."""
    with app_env.engine.begin() as conn:
        app_flows.arrive(conn, 1, datetime.now(UTC), source_aet=SCRIPT, modality="'%")
    at = open_page("qi_volumes", as_="viewer")
    sources = at.sidebar.multiselect(key="qi_sources")
    assert SCRIPT in sources.options
    sources.set_value([SCRIPT])
    at.run()
    assert_clean(at)
    assert "No studies" not in messages(at)
    for picked in ((date(2026, 1, 1), date(2025, 1, 1)), (date(1, 1, 1), date(1, 1, 2))):
        at.sidebar.date_input(key="qi_dates").set_value(picked)
        at.run()
        assert_clean(at)


def test_no_page_renders_html_from_data() -> None:
    """Streamlit escapes everything unless told otherwise; nothing in app/ tells it otherwise."""
    pattern = re.compile(r"unsafe_allow_html\s*=\s*True|st\.html\(|components\.v1\.html|st\.components")
    offenders = [str(p) for p in (PROJECT_ROOT / "app").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
