"""Retention in the app: the dry run (operators), the Overview's retention state, a purged study's pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from streamlit.testing.v1 import AppTest

from core import recorder
from core.states import AuditSource
from testkit import app_flows
from testkit.synthetic import make_study
from tests.integration.app.conftest import (
    MAIN,
    USERS,
    AppEnv,
    assert_clean,
    frame_text,
    new_app,
    open_session,
    table_rows,
)

pytestmark = pytest.mark.integration


def test_the_dry_run_lists_why_each_study_stays_for_operators_only(
    app_env: AppEnv, flows: dict[str, app_flows.Flow], open_page: Callable[..., AppTest]
) -> None:
    app_env.reconfigure(RETENTION_DAYS_AFTER_DELIVERY="7")
    with pytest.raises(ValueError):  # not in a viewer's navigation
        new_app("viewer").run().switch_page("pages/retention.py")
    page = AppTest.from_file(str(MAIN.parent / "pages" / "retention.py"), default_timeout=60)
    page.session_state["_session_id"] = open_session(USERS["viewer"])
    page.run()
    assert "needs the operator role" in page.error[0].value and not page.button
    at = open_page("retention", as_="operator")
    assert "by age: 7 days after delivery" in frame_text(at)
    at.button(key="retention_dry_run").click().run()
    assert_clean(at)
    text = frame_text(at)
    assert "Would delete: 0" in text and "DOE^JANE" not in text and "PID-JANE" not in text
    why = {r["Study #"]: r["Why"] for r in table_rows(at, "Why")}
    study = lambda name: f"study_detail?study={flows[name].study_id}"  # noqa: E731 - the link column's value
    assert why[study("delivered")].startswith("touched ")
    assert why[study("ai_pending")].startswith("AI result pending from ")
    assert "is dead" in why[study("dead")] and "is queued" in why[study("queued")]
    assert why[study("unrouted")].startswith("touched "), "every guard is checked before the policy"


def test_a_purged_study_shows_as_purged_without_viewer_links_and_the_overview_counts_it(
    app_env: AppEnv, open_page: Callable[..., AppTest]
) -> None:
    orthanc_study, series = app_flows.upload(app_env.orthanc.rest, make_study(1, 1, "XR PURGED", accession="ACCP1"))
    with app_env.engine.begin() as conn:
        flow = app_flows.arrive(conn, 950, datetime.now(UTC), orthanc_id=orthanc_study,
                                series_orthanc_id=next(iter(series.values())))
        kept = app_flows.arrive(conn, 951, datetime.now(UTC), description="XR KEPT")
        recorder.study_purged(conn, flow.study_id, at=datetime.now(UTC), actor="worker", source=AuditSource.WORKER,
                              detail={"policy": "days", "reason": "test"})
        recorder.retention_ran(conn, at=datetime.now(UTC), actor="worker", source=AuditSource.WORKER, purged=1,
                               failed=0, kept=1, detail={},
                               oldest_kept={"study": kept.study_id, "accession": "ACCK", "reason": "touched 1 min ago",
                                            "received_at": datetime.now(UTC).isoformat()})
    at = open_page("studies", as_="admin")
    at.switch_page("pages/study_detail.py")
    at.query_params["study"] = str(flow.study_id)
    at.run()
    assert_clean(at)
    assert [b.label for b in at.link_button] == [], "no OHIF or Orthanc link to a deleted study"
    assert "Purged: deleted from Orthanc by retention" in frame_text(at)
    studies = open_page("studies", as_="viewer")
    statuses = {r["Study #"]: r["Status"] for r in table_rows(studies, "Status")}
    link = "study_detail?study={}".format
    assert statuses[link(flow.study_id)].endswith("· purged") and not statuses[link(kept.study_id)].endswith("purged")
    overview = open_page("overview", as_="viewer")
    m = {x.label: x.value for x in overview.metric}
    assert m["Studies purged"] == "1" and m["Oldest study kept"] == f"#{kept.study_id}"
    assert f"Oldest study kept: #{kept.study_id} (accession ACCK)" in frame_text(overview)
    assert "touched 1 min ago" in frame_text(overview)
