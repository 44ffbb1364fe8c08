"""Rules: the worker's active rules and errors, the dry run, and the validated editor."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.settings import PROJECT_ROOT
from testkit import app_flows
from testkit.synthetic import make_study
from tests.integration.app.conftest import USERS, AppEnv, assert_clean, table_rows
from worker.rules_watch import RulesHolder

pytestmark = pytest.mark.integration


@pytest.fixture
def rules_file(app_env: AppEnv, tmp_path: Path) -> Path:
    """A copy of the shipped routing.yml that the app edits and the worker's holder loads."""
    path = tmp_path / "rules" / "routing.yml"
    path.parent.mkdir()
    shutil.copy(PROJECT_ROOT / "config" / "routing.example.yml", path)
    app_env.reconfigure(ROUTING_RULES=str(path))
    return path


@pytest.fixture
def holder(app_env: AppEnv, rules_file: Path) -> RulesHolder:
    """The worker's rules loader; each reload writes config_status as the worker does."""
    holder = RulesHolder(rules_file, app_env.engine)
    assert holder.reload()
    return holder


def test_active_rules_in_readable_form(app_env: AppEnv, holder: RulesHolder, open_page: Callable[..., AppTest]) -> None:
    at = open_page("rules", as_="viewer")
    rules = {r["Rule"]: r for r in table_rows(at, "When a series is")}
    assert list(rules) == ["leg-length-to-ai", "ai-qa-visualization-to-routers", "ai-sr-to-modlink"]
    leg = rules["leg-length-to-ai"]
    assert leg["When a series is"].startswith("original series and any of: StudyDescription contains")
    assert '"BONE LENGTH" (any case)' in leg["When a series is"]
    assert leg["Then"] == "send originals to the AI (MERCURE)"
    qa = rules["ai-qa-visualization-to-routers"]
    assert 'SeriesDescription does not contain "TABLE"' in qa["When a series is"]
    assert qa["Then"] == "deliver to LPCHROUTER, LPCHTROUTER"
    assert any("Last reload" in m.value for m in at.markdown)
    assert not at.text_area  # no editor for a viewer
    assert "needs the admin role" in " ".join(c.value for c in at.caption)


def test_refused_file_shows_the_worker_error_and_keeps_the_good_rules(
    app_env: AppEnv, holder: RulesHolder, rules_file: Path, open_page: Callable[..., AppTest]
) -> None:
    rules_file.write_text(rules_file.read_text() + "\n  - name: broken\n    then: {deliver_to: []}\n")
    assert holder.reload() is False
    at = open_page("rules", as_="operator")
    error = at.error[0].value
    assert "refused the rules file" in error and "routing.yml:" in error
    assert len(table_rows(at, "When a series is")) == 3
    assert any("differs from the active rules" in i.value for i in at.info)


def test_dry_run_on_a_recorded_study(
    app_env: AppEnv, holder: RulesHolder, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    at = open_page("rules", as_="viewer")
    at.selectbox(key="dry_study").set_value(flows["delivered"].study_id)
    at.run()
    assert_clean(at)
    plan = {(r["Destination"], r["Purpose"]): r for r in table_rows(at, "Series sent")}
    assert set(plan) == {("MERCURE", "ai"), ("LPCHROUTER", "delivery"), ("LPCHTROUTER", "delivery")}
    assert plan[("MERCURE", "ai")]["Rules"] == "leg-length-to-ai"
    assert plan[("LPCHROUTER", "delivery")]["Series sent"] == "QA VISUALIZATION"
    matches = table_rows(at, "Matching rules")
    assert {m["Matching rules"] for m in matches} == {"leg-length-to-ai", "ai-qa-visualization-to-routers"}
    assert any("database" in c.value for c in at.caption)
    # Only not-yet-routed series: everything was routed already.
    at.checkbox(key="dry_only_new").check()
    at.run()
    assert any("no series to route" in i.value for i in at.info)
    # An unrouted chest X-ray matches nothing.
    at.checkbox(key="dry_only_new").uncheck()
    at.text_input(key="dry_study_id").input(str(flows["unrouted"].study_id))
    at.run()
    assert any("No rule matches" in i.value for i in at.info)


def test_dry_run_reads_tags_from_orthanc(
    app_env: AppEnv, holder: RulesHolder, open_page: Callable[..., AppTest]
) -> None:
    datasets = make_study(1, 1, "EXTREMITY BILATERAL BONE LENGTH", accession="ACCDRY1")
    orthanc_study, orthanc_series = app_flows.upload(app_env.orthanc.rest, datasets)
    with app_env.engine.begin() as conn:
        # The recorded description matches no rule: only Orthanc's tags can make the rule match.
        flow = app_flows.arrive(conn, 901, datetime.now(UTC), description="(tags from Orthanc)",
                           orthanc_id=orthanc_study, series_orthanc_id=next(iter(orthanc_series.values())))
    at = open_page("rules")
    at.text_input(key="dry_study_id").input(str(flow.study_id))
    at.run()
    assert any(c.value == "Tags read from Orthanc." for c in at.caption)
    assert [(r["Destination"], r["Purpose"]) for r in table_rows(at, "Series sent")] == [("MERCURE", "ai")]


def test_editor_validates_saves_atomically_and_audits(
    app_env: AppEnv, holder: RulesHolder, rules_file: Path, flows: dict[str, app_flows.Flow],
    open_page: Callable[..., AppTest],
) -> None:
    original = rules_file.read_text()
    at = open_page("rules")
    editor = at.text_area(key="rules_draft")
    assert editor.value == original
    editor.input(original.replace("\nrules:\n", "\nrulez:\n", 1)).run()
    assert any("Not valid" in e.value and "routing.yml:" in e.value for e in at.error)
    assert at.button(key="rules_save").disabled
    assert rules_file.read_text() == original

    draft = original.replace("deliver_to: [MODLINK]", "deliver_to: [MODLINK, PACSX]")
    at.text_area(key="rules_draft").input(draft).run()
    assert any("Valid: 3 rule(s)" in s.value for s in at.success)
    # The draft can be dry-run before it is saved.
    at.radio(key="dry_rules").set_value("draft")
    at.selectbox(key="dry_study").set_value(flows["delivered"].study_id)
    at.run()
    at.button(key="rules_save").click().run()
    assert_clean(at)
    assert rules_file.read_text() == draft
    assert not list(rules_file.parent.glob(".routing.yml.*"))  # no temporary file left behind
    [entry] = app_env.audit("rules.save")
    assert entry.actor == USERS["admin"] and "+      deliver_to: [MODLINK, PACSX]" in entry.after["diff"]
    assert holder.reload()  # the worker's hot reload picks it up
    at.run()
    assert any("MODLINK, PACSX" in r["Then"] for r in table_rows(at, "When a series is"))


def test_editor_refuses_to_overwrite_a_file_changed_on_disk(
    app_env: AppEnv, holder: RulesHolder, rules_file: Path, open_page: Callable[..., AppTest]
) -> None:
    at = open_page("rules")
    at.text_area(key="rules_draft").input(rules_file.read_text().replace("priority: 30", "priority: 31")).run()
    changed_elsewhere = rules_file.read_text().replace("priority: 20", "priority: 21")
    rules_file.write_text(changed_elsewhere)
    at.button(key="rules_save").click().run()
    assert any("changed on disk" in e.value for e in at.error)
    assert rules_file.read_text() == changed_elsewhere
    assert app_env.audit("rules.save") == []
