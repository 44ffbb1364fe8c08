"""QI charts that used to mislead (issue 16, part 5): a lone bucket, zero failures, "per day".

The pages run under AppTest against the QI fixture (tests/integration/qi_fixture.py), as
in test_qi_pages.py; the assertions read the figures' axis settings as Streamlit sends
them to the browser.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from tests.integration.test_qi_pages import app_db, metrics, open_page  # noqa: F401 - app_db is a fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("app_db")]

DAY_MS = 86_400_000
S9_DAY = date(2026, 11, 1)  # S9 and S10, both delivered at the first attempt: no failure that day


def figure(at: AppTest, key: str) -> dict[str, Any]:
    [chart] = [c for c in at.get("plotly_chart") if c.key == f"chart_{key}"]
    return json.loads(chart.proto.spec)


def infos(at: AppTest) -> list[str]:
    return [str(i.value) for i in at.info]


def test_a_trend_with_one_bucket_has_a_date_axis_of_whole_days() -> None:
    at = open_page("qi_turnaround", start=S9_DAY, end=S9_DAY)
    xaxis = figure(at, "turnaround_trend")["layout"]["xaxis"]
    assert xaxis["type"] == "date" and xaxis["tickformat"] == "%Y-%m-%d"
    assert xaxis["dtick"] == DAY_MS and xaxis["tick0"] == "2026-11-01"  # one tick per day, never milliseconds
    assert xaxis["range"] == ["2026-10-31", "2026-11-02"]  # a day of room on each side of the lone point
    # Over several days it steps by a day too, and needs no fixed range.
    several = figure(open_page("qi_volumes"), "volumes_modality")["layout"]["xaxis"]
    assert several["dtick"] == DAY_MS and several["tickformat"] == "%Y-%m-%d" and "range" not in several
    # Over months, plotly places the ticks (never closer than a day: they are dates).
    months = figure(open_page("qi_turnaround", start=date(2026, 3, 1), end=S9_DAY), "turnaround_trend")
    assert "dtick" not in months["layout"]["xaxis"] and months["layout"]["xaxis"]["tickformat"] == "%Y-%m-%d"


def test_monthly_buckets_are_labelled_as_months() -> None:
    at = open_page("qi_volumes", start=date(2026, 3, 1), end=date(2026, 11, 30), grain="month")
    xaxis = figure(at, "volumes_modality")["layout"]["xaxis"]
    assert xaxis["tickformat"] == "%b %Y" and xaxis["dtick"] == "M1"


def test_zero_failures_show_the_empty_state_not_an_empty_chart() -> None:
    at = open_page("qi_failures", start=S9_DAY, end=S9_DAY)
    assert metrics(at)["Failed attempts"].startswith("0 ")  # "0 (0.0%)"
    keys = {str(c.key) for c in at.get("plotly_chart")}
    assert not keys & {"chart_failures_study_rate", "chart_failures_by_destination", "chart_failures_attempts"}
    shown = infos(at)
    assert "No failed study for these filters (0 of 2 routed)." in shown
    assert "No failed send for these filters." in shown
    assert "No failed attempt for these filters (0 of 2)." in shown
    # The data behind them can still be downloaded (it says "0 failed").
    assert not at.get("download_button")[0].proto.disabled


def test_a_rate_at_zero_sits_on_a_readable_axis() -> None:
    at = open_page("qi_ai_round_trip", start=date(2026, 3, 8), end=date(2026, 3, 8))
    yaxis = figure(at, "ai_rates")["layout"]["yaxis"]
    assert yaxis["range"][0] == 0 and yaxis["range"][1] >= 5 and yaxis["ticksuffix"] == " %"


def test_per_day_counts_the_days_that_had_studies() -> None:
    two_days = open_page("qi_volumes")  # 2026-03-07 and -08: 1 + 5 studies
    assert metrics(two_days)["Per day (days with studies)"] == "3.0"
    # A range reaching over empty days does not dilute it; the help gives the calendar figure.
    wide = open_page("qi_volumes", start=date(2026, 3, 1), end=date(2026, 3, 8))
    assert metrics(wide)["Per day (days with studies)"] == "3.0"
    [card] = [m for m in wide.metric if m.label == "Per day (days with studies)"]
    assert "6 studies over the 2 day(s)" in card.help and "of 8 calendar day(s)" in card.help
    assert "0.8 per calendar day" in card.help
