"""Every Grafana panel's SQL, with Grafana's macros expanded, against the populated fixture.

No Grafana server runs here, so this test does what Grafana would: it reads the
provisioned dashboard JSON, expands $__timeFilter and the template variables the way
the PostgreSQL datasource does, and runs each query as grafana_ro (the datasource's
role). Each must return rows of the panel's shape, and the numbers must equal the
ones core.qi computes for the app and the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import Engine, text

from core import qi
from core.db import make_engine
from core.qi import QiFilter
from core.settings import PROJECT_ROOT
from testkit.harness.stack import QiDatabase
from tests.integration import qi_fixture

pytestmark = pytest.mark.integration

GRAFANA = PROJECT_ROOT / "stack" / "grafana"
LA = ZoneInfo("America/Los_Angeles")
MARCH = QiFilter(date(2026, 3, 7), date(2026, 3, 8))
MULTI = ("modality", "source", "destination", "rule")


def load_builder() -> ModuleType:
    """stack/grafana/build_dashboards.py (a script, not a package module)."""
    name = "hub_grafana_build_dashboards"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GRAFANA / "build_dashboards.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def panels() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            found.append((f"{path.stem}: {panel['title']}", panel))
    return found


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, str | list[str]]) -> str:
    """Grafana's PostgreSQL macros and template variables, as the datasource expands them."""
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} BETWEEN '{start.strftime(stamp)}' AND '{end.strftime(stamp)}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{start.strftime(stamp)}'").replace("$__timeTo()", f"'{end.strftime(stamp)}'")
    assert "$__" not in sql, f"unexpanded macro in {sql}"
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        if isinstance(value, list):  # multi-value: quoted list, or the raw allValue
            rendered = "'__all__'" if not value else ",".join("'" + v.replace("'", "''") + "'" for v in value)
        else:
            rendered = value
        sql = sql.replace(f"${name}", rendered)
    assert "$" not in sql.replace("$$", ""), f"unexpanded variable in {sql}"
    return sql


def grafana_url(qi_db: QiDatabase) -> str:
    s = qi_db.settings
    password = quote(s.grafana_db_password.get_secret_value(), safe="")
    return f"postgresql+psycopg://grafana_ro:{password}@{s.postgres_host}:{s.postgres_port}/{qi_db.name}"


@pytest.fixture
def grafana(qi_db: QiDatabase) -> Iterator[tuple[Engine, Engine]]:
    """(grafana_ro engine, owner engine) on a database holding the fixture."""
    owner = make_engine(qi_db.url)
    with owner.begin() as conn:
        qi.sync_qi_settings(conn, qi_db.settings)
        qi_fixture.build(conn)
    reader = make_engine(grafana_url(qi_db))
    try:
        yield reader, owner
    finally:
        reader.dispose()
        owner.dispose()


def run(engine: Engine, sql: str) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(text(sql))
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def test_dashboards_are_generated_from_the_specs() -> None:
    assert load_builder().main(["--check"]) == 0


def test_panels_follow_the_conventions() -> None:
    found = panels()
    assert len(found) >= 18
    datasource = (GRAFANA / "provisioning" / "datasources" / "qi.yaml").read_text()
    assert "uid: hub-qi" in datasource and "user: grafana_ro" in datasource
    assert "${GRAFANA_DB_PASSWORD}" in datasource  # no password in the repository
    for name, panel in found:
        sql = panel["targets"][0]["rawSql"]
        assert "$__interval" not in sql and "$__timeGroup" not in sql, name
        assert "$__timeFilter(" in sql, name
        assert "avg(" not in sql.lower(), name
        assert panel["datasource"]["uid"] == "hub-qi", name
        assert re.search(r"\bFROM (qi_study|qi_delivery|qi_attempt)\b", sql), name
        assert not re.search(r"\b(FROM|JOIN)\s+(studies|series|routing_jobs|events)\b", sql), name  # views only
        if "p50" in sql:
            assert "percentile_cont(0.5)" in sql and "percentile_cont(0.95)" in sql, name


@pytest.mark.parametrize("grain", ["day", "week", "month"])
def test_every_panel_returns_rows_of_its_shape(grafana: tuple[Engine, Engine], grain: str) -> None:
    reader, _ = grafana
    specs = {f"{d.uid.removeprefix('hub-')}: {p.title}": p for d in load_builder().DASHBOARDS for p in d.panels}
    start, end = MARCH.bounds(LA)
    variables: dict[str, str | list[str]] = {"grain": grain, **{name: [] for name in MULTI}}
    for name, panel in panels():
        spec = specs[name]
        frame = run(reader, expand(panel["targets"][0]["rawSql"], start, end, variables))
        assert len(frame) > 0, name
        assert set(spec.columns) <= set(frame.columns), (name, list(frame.columns))
        if panel["targets"][0]["format"] == "time_series":
            assert frame["time"].map(lambda t: isinstance(t, datetime) and t.tzinfo is not None).all(), name
            values = frame.drop(columns=["time", "metric"], errors="ignore")
            assert all(pd.api.types.is_numeric_dtype(values[c].dropna().astype(float)) for c in values), name


def test_template_variables_and_filters(grafana: tuple[Engine, Engine]) -> None:
    reader, _ = grafana
    start, end = MARCH.bounds(LA)
    dashboard = json.loads((GRAFANA / "dashboards" / "qi-volumes.json").read_text())
    options = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            options[variable["name"]] = sorted(run(reader, expand(variable["query"], start, end, {})).iloc[:, 0])
    assert options == {"modality": ["CR", "CT", "DX", "MR"], "source": ["MOD_A", "MOD_B", "MOD_C"],
                       "destination": ["LPCHROUTER", "MERCURE", "MODLINK"],
                       "rule": ["ai_sr", "bone_length_ai", "direct_pacs", "qa_visualization"]}
    by_modality = next(p for n, p in panels() if n == "qi-volumes: Studies per $grain by modality")
    variables: dict[str, str | list[str]] = {"grain": "day", "modality": ["CR", "MR"], "source": [],
                                             "destination": [], "rule": []}
    frame = run(reader, expand(by_modality["targets"][0]["rawSql"], start, end, variables))
    assert dict(zip(frame["metric"], frame["value"], strict=True)) == {"CR": 3, "MR": 1}


def test_panel_numbers_equal_the_apps(grafana: tuple[Engine, Engine]) -> None:
    reader, owner = grafana
    start, end = MARCH.bounds(LA)
    variables: dict[str, str | list[str]] = {"grain": "day", **{name: [] for name in MULTI}}
    sql = {name: panel["targets"][0]["rawSql"] for name, panel in panels()}

    def panel(name: str) -> pd.DataFrame:
        return run(reader, expand(sql[name], start, end, variables))

    with owner.connect() as conn:
        stats = qi.stage_stats(conn, MARCH, LA, grain="day", stages=["turnaround"])
        outcomes = qi.study_outcomes(conn, MARCH, LA, grain="day")
        sla = qi.sla_compliance(conn, MARCH, LA, grain="all").set_index("metric")
        errors = qi.top_errors(conn, MARCH, LA)
        heat = qi.volume_heatmap(conn, MARCH, LA)

    trend = panel("qi-turnaround: Turnaround: p50, p90, p95 per $grain")
    assert list(trend["time"]) == list(stats["bucket_start"])
    for unit_col, col in (("p50_min", "p50"), ("p90_min", "p90"), ("p95_min", "p95"), ("max_min", "max")):
        assert (trend[unit_col] * 60).round(6).tolist() == stats[col].round(6).tolist()
    assert trend["sla_min"].tolist() == [60.0]  # one bucket (03-08): 3600 s

    rate = panel("qi-failures: Study failure rate per $grain")
    assert rate["failure_rate"].tolist() == outcomes["failure_rate"].tolist() == [1.0, 0.0]
    assert rate["time"].tolist() == [datetime(2026, 3, 7, 8, tzinfo=UTC), datetime(2026, 3, 8, 8, tzinfo=UTC)]

    for metric, title in (("turnaround", "Turnaround"), ("to_destinations", "To destinations")):
        stat = panel(f"qi-sla: {title} within SLA").iloc[0]
        assert stat["compliance"] == pytest.approx(sla.loc[metric, "compliance"])
        assert stat["due"] == sla.loc[metric, "n_due"]

    top = panel("qi-failures: Top errors")
    assert top["error"].tolist() == errors["error"].tolist()
    assert top["share"].tolist() == errors["share"].tolist()

    grid = panel("qi-volumes: Hour of day × weekday").set_index("weekday")
    for row in heat.itertuples():
        assert grid.loc[("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[row.isodow - 1], f"{row.hour:02d}"] == row.studies
    assert int(grid.to_numpy().sum()) == int(heat["studies"].sum()) == 6


def test_expand_renders_like_grafana() -> None:
    start, end = datetime(2026, 3, 7, 8, tzinfo=UTC), datetime(2026, 3, 9, 7, tzinfo=UTC)
    sql = "SELECT 1 WHERE $__timeFilter(s.at) AND x IN ($modality) AND '$grain' = 'day' AND y IN ($source)"
    assert expand(sql, start, end, {"modality": ["CR", "O'X"], "grain": "day", "source": []}) == (
        "SELECT 1 WHERE s.at BETWEEN '2026-03-07T08:00:00Z' AND '2026-03-09T07:00:00Z' "
        "AND x IN ('CR','O''X') AND 'day' = 'day' AND y IN ('__all__')")
    assert isinstance(Path(GRAFANA), Path)
