"""Drill-down (issue 16): every QI number leads to exactly the studies it counts.

Each QI page runs through app/main.py on the QI fixture's days (tests/integration/qi_fixture.py:
hand-computed studies across a DST change, retries, dead jobs, AI results late and missing).
Every KPI link and every chart element's drill (plotly customdata: query string and the
count the element shows) must list, in the Studies page, as many rows as that count. All
elements are checked through core.queries.search_studies (what the Studies page calls), and
every KPI link plus one element per chart through the Studies page itself. A chart click
is sent as the selection state a browser sends, and must land on the Studies list.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any
from urllib.parse import parse_qs

import pytest
from streamlit.testing.v1 import AppTest

from core import qi, queries
from tests.integration import qi_fixture
from tests.integration.app.conftest import AppEnv, assert_clean, new_app, table_rows

pytestmark = pytest.mark.integration

QI_PAGES = ("qi_turnaround", "qi_ai_round_trip", "qi_failures", "qi_volumes", "qi_sla")
DAYS = {"start": date(2026, 3, 7), "end": date(2026, 3, 8)}


@pytest.fixture
def fixture_studies(app_env: AppEnv) -> dict[str, qi_fixture.Study]:
    with app_env.engine.begin() as conn:
        qi.sync_qi_settings(conn, app_env.settings)
        return qi_fixture.build(conn)


def qi_page(name: str, **store: Any) -> AppTest:
    at = new_app("viewer")
    at.run()
    at.session_state["_qi_filters"] = {**DAYS, "grain": "day", "modalities": [], "sources": [], "destinations": [],
                                       "rules": [], **store}
    at.switch_page(f"pages/{name}.py").run()
    assert_clean(at)
    return at


def kpi_links(at: AppTest) -> list[tuple[dict[str, list[str]], int]]:
    """(query, count) of every link to the Studies page ("N studies", "N breached", ...)."""
    out = []
    for link in at.get("page_link"):
        if link.proto.page.endswith("studies") or "studies" in link.proto.page:
            out.append((parse_qs(link.proto.query_string), int(str(link.proto.label).split()[0])))
    return out


def chart_points(at: AppTest) -> dict[str, list[tuple[dict[str, list[str]], int]]]:
    """Per chart key: (query, count) of each element with a drill and a study count."""
    out: dict[str, list[tuple[dict[str, list[str]], int]]] = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        points = []
        for trace in spec["data"]:
            cells = trace.get("customdata") or []
            flat = [c for row in cells for c in row] if cells and isinstance(cells[0][0], list) else cells
            for q, n, *_hover in flat:  # px appends hover_data columns after custom_data
                if q and n >= 0:
                    points.append((parse_qs(q), int(n)))
        out[str(chart.key).removeprefix("chart_")] = points
    return out


def studies_page(query: dict[str, list[str]]) -> tuple[AppTest, list[dict[str, Any]]]:
    at = new_app("viewer")
    at.run()
    at.switch_page("pages/studies.py")
    at.query_params.update({k: v if len(v) > 1 else v[0] for k, v in query.items()})
    at.run()
    assert_clean(at)
    try:
        rows = table_rows(at, "Accession")
    except AssertionError:
        rows = []
    return at, rows


def listed(app_env: AppEnv, query: dict[str, list[str]]) -> int:
    """Rows of the Studies list for `query`, read the way the page reads them."""
    drill = qi.Drill.from_query(query)
    assert drill is not None
    flt = queries.StudyFilter(drill=drill, zone=app_env.settings.tz)
    with app_env.engine.connect() as conn:
        return len(queries.search_studies(conn, flt, limit=1000).rows)


@pytest.mark.parametrize("name", QI_PAGES)
def test_every_number_lists_exactly_its_studies(
    app_env: AppEnv, fixture_studies: dict[str, qi_fixture.Study], name: str
) -> None:
    at = qi_page(name)
    links = kpi_links(at)
    charts = chart_points(at)
    assert links, f"{name}: no KPI leads to its studies"
    assert sum(1 for points in charts.values() if points) >= 2, f"{name}: charts without drill-down: {charts}"
    for query, count in [*links, *(p for points in charts.values() for p in points)]:
        assert listed(app_env, query) == count, (name, query)
    # through the Studies page: every KPI link, and the first element of each chart
    for query, count in [*links, *(points[0] for points in charts.values() if points)]:
        page, rows = studies_page(query)
        assert len(rows) == count, (name, query)
        banner = " ".join(str(i.value) for i in page.info)
        assert f"**{count} stud" in banner, banner  # the page says how many, and behind what
        assert "received 2026-03-07 to 2026-03-08" in banner or "attempts ended" in banner
        assert "SECRET^" not in str(page)  # the viewer sees no patient names


def test_a_breakdown_drills_into_its_group(app_env: AppEnv, fixture_studies: dict[str, qi_fixture.Study]) -> None:
    at = qi_page("qi_turnaround")
    at.selectbox(key="qi_turnaround_group").set_value("destination").run()
    points = chart_points(at)["turnaround_by_destination"]
    assert {q["grp"][0] for q, _ in points} >= {"LPCHROUTER"}
    for query, count in points:
        assert listed(app_env, query) == count
    # the page's own filters travel with the link: a modality filter narrows the studies
    at = qi_page("qi_volumes", modalities=["CR"])
    (query, count), *_ = kpi_links(at)
    assert query["mod"] == ["CR"]
    assert listed(app_env, query) == count == 3  # S1, S4 and S7 (S6, S9 and S10 are other days)


def test_a_chart_click_opens_the_studies_list(app_env: AppEnv, fixture_studies: dict[str, qi_fixture.Study]) -> None:
    at = qi_page("qi_failures")
    (query, count), *_ = chart_points(at)["failures_by_destination"]
    q = "&".join(f"{k}={v}" for k, vs in query.items() for v in vs)
    # what the browser sends when a bar is clicked: the selection state of the chart
    at.session_state["chart_failures_by_destination"] = {
        "selection": {"points": [{"customdata": [q, count], "curve_number": 0, "point_index": 0}],
                      "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    assert_clean(at)
    assert at.title[0].value == "Studies"
    assert at.query_params.get("qi") in ("delivery", ["delivery"])
    assert len(table_rows(at, "Accession")) == count == 1  # S3, dead at LPCHROUTER


def test_an_invalid_link_is_refused_and_the_list_stays_whole(
    app_env: AppEnv, fixture_studies: dict[str, qi_fixture.Study]
) -> None:
    at, rows = studies_page({"qi": ["no_such_measure"], "from": ["2026-03-07"], "to": ["2026-03-08"]})
    assert "not valid" in at.warning[0].value
    assert len(rows) == len(fixture_studies) + 1  # every study, and the orphan AI result


def test_overview_kpis_list_their_studies(app_env: AppEnv, flows: dict[str, Any]) -> None:
    at = new_app("viewer")
    at.run()
    at.switch_page("pages/overview.py").run()
    assert_clean(at)
    links = kpi_links(at)
    assert len(links) >= 4
    for query, count in links:
        _, rows = studies_page(query)
        assert len(rows) == count, query
