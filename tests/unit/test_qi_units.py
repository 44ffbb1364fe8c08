"""QI pieces that need no database: date bounds across DST, export formatting, the CLI's
argument handling, and the Grafana dashboards' conventions."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from typer.testing import CliRunner

from core import reports
from core.qi import QiError, QiFilter
from core.settings import PROJECT_ROOT
from ops.cli import app

LA = ZoneInfo("America/Los_Angeles")
GRAFANA = PROJECT_ROOT / "stack" / "grafana"


def test_filter_bounds_follow_the_local_calendar_across_dst() -> None:
    spring = QiFilter(date(2026, 3, 8), date(2026, 3, 8)).bounds(LA)
    assert spring == (datetime(2026, 3, 8, 8, tzinfo=UTC), datetime(2026, 3, 9, 7, tzinfo=UTC))  # a 23-hour day
    autumn = QiFilter(date(2026, 11, 1), date(2026, 11, 1)).bounds(LA)
    assert autumn == (datetime(2026, 11, 1, 7, tzinfo=UTC), datetime(2026, 11, 2, 8, tzinfo=UTC))  # 25 hours
    assert (autumn[1] - autumn[0]).total_seconds() == 25 * 3600


def test_filter_parameters() -> None:
    flt = QiFilter(date(2026, 3, 1), date(2026, 3, 31), modalities=("CR",))
    params = flt.params(LA)
    assert params["p_modality"] == ["CR"]
    assert params["p_source"] is None and params["p_destination"] is None and params["p_rule"] is None
    with pytest.raises(QiError, match="before the start"):
        QiFilter(date(2026, 3, 2), date(2026, 3, 1))


def test_export_cells() -> None:
    at = datetime(2026, 3, 8, 10, 8, 10, 123456, tzinfo=UTC)
    assert reports.format_value(at, LA) == "2026-03-08T03:08:10.123-07:00"
    assert reports.format_value(datetime(2026, 3, 8, 9, 55, tzinfo=UTC), LA) == "2026-03-08T01:55:00.000-08:00"
    assert reports.format_value(790.0004, LA) == 790.0
    assert reports.format_value(["LPCHROUTER", "MODLINK"], LA) == "LPCHROUTER;MODLINK"
    assert reports.format_value(None, LA) is None
    assert reports.format_value(date(2026, 3, 8), LA) == "2026-03-08"
    assert reports.format_value(True, LA) == "true"


def test_csv_and_xlsx_writers(tmp_path: Path) -> None:
    columns = ("a", "b", "c")
    rows = [[1, "x", None], [2.5, "=SUM(A1)", "y"]]
    text_out = io.StringIO()
    assert reports.write_csv(text_out, columns, iter(rows)) == 2
    assert list(csv.reader(io.StringIO(text_out.getvalue()))) == [["a", "b", "c"], ["1", "x", ""],
                                                                  ["2.5", "=SUM(A1)", "y"]]
    path = tmp_path / "x.xlsx"
    assert reports.write_xlsx(path, "data", columns, iter(rows)) == 2
    sheet = openpyxl.load_workbook(path)["data"]
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values == [["a", "b", "c"], [1, "x", None], [2.5, "=SUM(A1)", "y"]]
    assert sheet["B3"].data_type == "s"  # text that looks like a formula stays text


def test_cli_help_and_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "report" in runner.invoke(app, ["--help"]).output
    assert runner.invoke(app, ["report", "--help"]).exit_code == 0
    missing = runner.invoke(app, ["report", "--from", "2026-03-01", "--output", "x.csv"])
    assert missing.exit_code == 2  # --to is required
    bad = runner.invoke(app, ["report", "--from", "1/3/2026", "--to", "2026-03-01", "--output", "x.csv"])
    assert bad.exit_code == 2
    env = tmp_path / "empty.env"
    env.write_text("")
    unconfigured = runner.invoke(app, ["report", "--from", "2026-03-01", "--to", "2026-03-02", "--output",
                                       str(tmp_path / "x.csv"), "--env-file", str(env)])
    assert unconfigured.exit_code == 3  # secrets missing: a configuration error, nothing written
    assert not (tmp_path / "x.csv").exists()


def _builder() -> ModuleType:
    name = "hub_grafana_build_dashboards"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GRAFANA / "build_dashboards.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_grafana_dashboards_are_up_to_date_and_follow_the_conventions() -> None:
    assert _builder().main(["--check"]) == 0
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert [f.stem for f in files] == ["qi-ai", "qi-failures", "qi-sla", "qi-turnaround", "qi-volumes"]
    for path in files:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert variables == {"grain", "modality", "source", "destination", "rule"}
        for panel in dashboard["panels"]:
            sql = panel["targets"][0]["rawSql"]
            assert "$__timeFilter(" in sql and "$__interval" not in sql, panel["title"]
            assert not re.search(r"\bavg\s*\(", sql, re.I), panel["title"]
            assert panel["description"], panel["title"]
