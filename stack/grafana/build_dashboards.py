"""Generate the Grafana dashboards (stack/grafana/dashboards/*.json) from the panel specs below.

Why generated: five dashboards share their filters, time buckets and conventions, and
the JSON Grafana wants is long. The specs are the reviewable source; the JSON is
committed (Grafana's file provider reads it) and a test fails when it is stale:

    .venv/bin/python stack/grafana/build_dashboards.py          # rewrite the JSON
    .venv/bin/python stack/grafana/build_dashboards.py --check  # exit 1 when stale

Conventions, all of which the test checks:
- Panels read the QI views (qi_study, qi_delivery, qi_attempt, qi_settings) as the
  read-only role grafana_ro: the same definitions as the app and the CLI report.
- The time range applies with $__timeFilter on the row's own time (a study's
  first_received_at, an attempt's time). Buckets are the views' local day, week or
  month starts in TZ (template variable $grain), never $__interval.
- Durations are aggregated with percentile_cont (p50, p90, p95) and max, not averages.
"""

# ruff: noqa: S608 - SQL text for Grafana panels, built from constants; nothing is executed here

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "hub-qi"}
ALL = "'__all__'"

BUCKET = ("CASE '$grain' WHEN 'week' THEN s.week_start WHEN 'month' THEN s.month_start "
          "ELSE s.day_start END")
STUDY_FILTERS = (
    "$__timeFilter(s.first_received_at)"
    f"\n  AND ({ALL} IN ($modality) OR s.modality IN ($modality))"
    f"\n  AND ({ALL} IN ($source) OR s.source_aet IN ($source))"
    f"\n  AND ({ALL} IN ($destination) OR s.destinations && ARRAY[$destination]::text[])"
    f"\n  AND ({ALL} IN ($rule) OR s.rules && ARRAY[$rule]::text[])"
)
DELIVERY_FILTERS = (
    "$__timeFilter(d.first_received_at)"
    f"\n  AND ({ALL} IN ($modality) OR d.modality IN ($modality))"
    f"\n  AND ({ALL} IN ($source) OR d.source_aet IN ($source))"
    f"\n  AND ({ALL} IN ($destination) OR d.destination IN ($destination))"
    f"\n  AND ({ALL} IN ($rule) OR d.rules && ARRAY[$rule]::text[])"
)
ATTEMPT_FILTERS = (
    "$__timeFilter(a.at)"
    f"\n  AND ({ALL} IN ($destination) OR a.destination IN ($destination))"
    f"\n  AND ({ALL} IN ($rule) OR a.rule_name IN ($rule))"
    f"\n  AND ({ALL} IN ($source) OR a.study_id IN (SELECT study_id FROM qi_study WHERE source_aet IN ($source)))"
    f"\n  AND ({ALL} IN ($modality) OR a.study_id IN (SELECT study_id FROM qi_study WHERE modality IN ($modality)))"
)


def percentiles(column: str, unit: str = "min", divisor: int = 60) -> str:
    return ",\n       ".join(
        [f"percentile_cont({p / 100}) WITHIN GROUP (ORDER BY {column}) / {divisor} AS p{p}_{unit}"
         for p in (50, 90, 95)]
        + [f"max({column}) / {divisor} AS max_{unit}", f"count({column}) AS n"])


@dataclass(frozen=True)
class Panel:
    """One panel: its SQL and what the result must look like (checked by the test)."""

    title: str
    kind: str  # timeseries | table | stat | barchart
    sql: str
    description: str
    columns: tuple[str, ...]  # columns the result must have
    fmt: str = "table"  # "time_series" for timeseries panels
    unit: str | None = None
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


def stage_trend(stage: str, sla_column: str, label: str) -> Panel:
    return Panel(
        f"{label}: p50, p90, p95 per $grain", "timeseries", fmt="time_series", unit="m",
        sql=(f"SELECT {BUCKET} AS time,\n       {percentiles(f's.{stage}_s')},\n"
             f"       max(q.{sla_column}) / 60.0 AS sla_min\n"
             f"FROM qi_study s CROSS JOIN qi_settings q\nWHERE {STUDY_FILTERS}\n  AND s.{stage}_s IS NOT NULL\n"
             "GROUP BY 1 ORDER BY 1"),
        description=f"percentile_cont of {stage}_s (minutes) per local $grain of first reception; "
                    f"sla_min is {sla_column.upper()}.",
        columns=("time", "p50_min", "p90_min", "p95_min", "max_min", "n", "sla_min"))


def distribution(stage: str, label: str) -> Panel:
    return Panel(
        f"{label}: distribution (5-minute bins)", "barchart",
        sql=(f"SELECT (floor(s.{stage}_s / 300) * 5)::text || ' min' AS bin, count(*) AS studies\n"
             f"FROM qi_study s\nWHERE {STUDY_FILTERS}\n  AND s.{stage}_s IS NOT NULL\n"
             f"GROUP BY floor(s.{stage}_s / 300) ORDER BY floor(s.{stage}_s / 300)"),
        description=f"Studies per 5-minute bin of {stage}_s.", columns=("bin", "studies"))


def compliance_stat(metric: str, label: str) -> Panel:
    return Panel(
        f"{label} within SLA", "stat", unit="percentunit", width=8, height=5,
        sql=(f"SELECT count(*) FILTER (WHERE s.sla_{metric} = 'met')::float\n"
             f"       / NULLIF(count(*) FILTER (WHERE s.sla_{metric} IN ('met', 'breached')), 0) AS compliance,\n"
             f"       count(*) FILTER (WHERE s.sla_{metric} IN ('met', 'breached')) AS due,\n"
             f"       count(*) FILTER (WHERE s.sla_{metric} = 'pending') AS pending\n"
             f"FROM qi_study s\nWHERE {STUDY_FILTERS}"),
        description="met / (met + breached); breached includes studies without a value past the threshold.",
        columns=("compliance", "due", "pending"), options={"reduceOptions": {"fields": "/^compliance$/"}})


TURNAROUND = Dashboard("hub-qi-turnaround", "QI · Turnaround",
                       "First instance received -> last required delivery.", (
    stage_trend("turnaround", "sla_turnaround_s", "Turnaround"),
    distribution("turnaround", "Turnaround"),
    compliance_stat("turnaround", "Turnaround"),
    Panel("Turnaround by modality", "table", width=8, height=5,
          sql=(f"SELECT COALESCE(s.modality, '(none)') AS modality,\n       {percentiles('s.turnaround_s')}\n"
               f"FROM qi_study s\nWHERE {STUDY_FILTERS}\n  AND s.turnaround_s IS NOT NULL\nGROUP BY 1 ORDER BY 1"),
          description="Percentiles of turnaround (minutes) per modality.",
          columns=("modality", "p50_min", "p90_min", "p95_min", "max_min", "n")),
    Panel("Time to each destination", "table", width=8, height=5,
          sql=(f"SELECT d.destination,\n       {percentiles('d.turnaround_s')}\n"
               f"FROM qi_delivery d\nWHERE {DELIVERY_FILTERS}\n  AND d.purpose = 'delivery' "
               "AND d.turnaround_s IS NOT NULL\nGROUP BY 1 ORDER BY 1"),
          description="First received -> that destination's required deliveries all succeeded (minutes).",
          columns=("destination", "p50_min", "p90_min", "p95_min", "max_min", "n")),
))

AI = Dashboard("hub-qi-ai", "QI · AI round trip", "AI send succeeded -> first AI-result instance received.", (
    stage_trend("ai_round_trip", "sla_ai_round_trip_s", "AI round trip"),
    Panel("Overdue and no-result rates per $grain", "timeseries", fmt="time_series", unit="percentunit",
          sql=(f"SELECT {BUCKET} AS time,\n"
               "       count(*) FILTER (WHERE s.ai_overdue)::float / NULLIF(count(s.ai_sent_at), 0) AS overdue_rate,\n"
               "       count(*) FILTER (WHERE s.ai_no_result)::float / NULLIF(count(s.ai_sent_at), 0) "
               "AS no_result_rate,\n       count(s.ai_sent_at) AS sent\n"
               f"FROM qi_study s\nWHERE {STUDY_FILTERS}\n  AND s.ai_sent_at IS NOT NULL\nGROUP BY 1 ORDER BY 1"),
          description="Over studies sent to the AI: overdue = result later than AI_RESULT_TIMEOUT or missing "
                      "past it; no result = nothing back yet.",
          columns=("time", "overdue_rate", "no_result_rate", "sent")),
    Panel("Stages around the AI", "table", width=12,
          sql=("SELECT v.stage,\n       " + percentiles("v.seconds") + "\n"
               "FROM qi_study s\nCROSS JOIN LATERAL (VALUES ('1 to_ai', s.to_ai_s), ('2 ai_round_trip', "
               "s.ai_round_trip_s),\n                           ('3 result_settle', s.result_settle_s)) "
               f"AS v (stage, seconds)\nWHERE {STUDY_FILTERS}\n  AND v.seconds IS NOT NULL\n"
               "GROUP BY 1 ORDER BY 1"),
          description="stable -> AI send succeeded -> first result instance -> result series stable (minutes).",
          columns=("stage", "p50_min", "p90_min", "p95_min", "max_min", "n")),
    Panel("Overdue studies", "table", width=12,
          sql=("SELECT s.accession_number, s.study_instance_uid, s.ai_sent_at, s.ai_result_at, "
               "s.ai_result_state,\n       qi_seconds(COALESCE(s.ai_result_at, now()), s.ai_sent_at) / 60 "
               f"AS waited_min\nFROM qi_study s\nWHERE {STUDY_FILTERS}\n  AND s.ai_overdue\n"
               "ORDER BY s.ai_sent_at DESC LIMIT 200"),
          description="Sent to the AI and late or still without a result past AI_RESULT_TIMEOUT.",
          columns=("accession_number", "study_instance_uid", "ai_sent_at", "ai_result_at", "ai_result_state",
                   "waited_min")),
))

FAILURES = Dashboard("hub-qi-failures", "QI · Failures", "Failed studies, sends and attempts, with denominators.", (
    Panel("Study failure rate per $grain", "timeseries", fmt="time_series", unit="percentunit",
          sql=(f"SELECT {BUCKET} AS time,\n"
               "       count(*) FILTER (WHERE s.outcome = 'failed')::float / NULLIF(count(*) FILTER "
               "(WHERE s.routed), 0) AS failure_rate,\n"
               "       count(*) FILTER (WHERE s.routed) AS routed,\n"
               "       count(*) FILTER (WHERE s.outcome = 'failed') AS failed\n"
               f"FROM qi_study s\nWHERE {STUDY_FILTERS}\nGROUP BY 1 ORDER BY 1"),
          description="Routed studies with a dead job / routed studies (unrouted studies are not in the rate).",
          columns=("time", "failure_rate", "routed", "failed")),
    Panel("Failed attempts per destination", "timeseries", fmt="time_series",
          sql=("SELECT a.day_start AS time, a.destination AS metric, count(*) FILTER (WHERE a.failed) AS value\n"
               f"FROM qi_attempt a\nWHERE {ATTEMPT_FILTERS}\nGROUP BY 1, 2 ORDER BY 1, 2"),
          description="Failed or dead send attempts per local day of the attempt and destination.",
          columns=("time", "metric", "value")),
    Panel("By destination", "table",
          sql=("SELECT d.destination, d.purpose, count(*) AS sends,\n"
               "       count(*) FILTER (WHERE d.outcome = 'failed') AS failed,\n"
               "       count(*) FILTER (WHERE d.outcome = 'failed')::float / count(*) AS failure_rate\n"
               f"FROM qi_delivery d\nWHERE {DELIVERY_FILTERS}\n  AND d.outcome <> 'cancelled'\n"
               "GROUP BY 1, 2 ORDER BY 1, 2"),
          description="Required sends per destination (cancelled excluded); failed = a job is dead.",
          columns=("destination", "purpose", "sends", "failed", "failure_rate")),
    Panel("Top errors", "table",
          sql=("SELECT a.error, count(*) AS failed_attempts,\n"
               "       count(*)::float / sum(count(*)) OVER () AS share,\n"
               "       string_agg(DISTINCT a.destination, ', ') AS destinations\n"
               f"FROM qi_attempt a\nWHERE {ATTEMPT_FILTERS}\n  AND a.failed\n"
               "GROUP BY a.error ORDER BY count(*) DESC, a.error LIMIT 10"),
          description="First line of each failed attempt's error; share = of all failed attempts.",
          columns=("error", "failed_attempts", "share", "destinations")),
))

HOURS = ",\n       ".join(f"count(*) FILTER (WHERE s.received_hour = {h}) AS \"{h:02d}\"" for h in range(24))
VOLUMES = Dashboard("hub-qi-volumes", "QI · Volumes", "Studies first received, in the configured time zone.", (
    Panel("Studies per $grain by modality", "timeseries", fmt="time_series",
          sql=(f"SELECT {BUCKET} AS time, COALESCE(s.modality, '(none)') AS metric, count(*) AS value\n"
               f"FROM qi_study s\nWHERE {STUDY_FILTERS}\nGROUP BY 1, 2 ORDER BY 1, 2"),
          description="Studies per local $grain of first reception and modality.", columns=("time", "metric", "value")),
    Panel("Studies per $grain by source AET", "timeseries", fmt="time_series",
          sql=(f"SELECT {BUCKET} AS time, COALESCE(s.source_aet, '(none)') AS metric, count(*) AS value\n"
               f"FROM qi_study s\nWHERE {STUDY_FILTERS}\nGROUP BY 1, 2 ORDER BY 1, 2"),
          description="Studies per local $grain and sending AE title.", columns=("time", "metric", "value")),
    Panel("Hour of day × weekday", "table", width=24, height=9,
          sql=("SELECT (ARRAY['Mon','Tue','Wed','Thu','Fri','Sat','Sun'])[s.received_isodow] AS weekday,\n"
               f"       {HOURS}\nFROM qi_study s\nWHERE {STUDY_FILTERS}\n"
               "GROUP BY s.received_isodow ORDER BY s.received_isodow"),
          description="Studies by local hour (columns) and ISO weekday of first reception.",
          columns=("weekday", "00", "12", "23"), options={"cellHeight": "sm"}),
))

SLA = Dashboard("hub-qi-sla", "QI · SLA", "Share of due studies within the configured thresholds.", (
    compliance_stat("turnaround", "Turnaround"),
    compliance_stat("ai_round_trip", "AI round trip"),
    compliance_stat("to_destinations", "To destinations"),
    Panel("Compliance per $grain", "timeseries", fmt="time_series", unit="percentunit", width=24,
          sql=(f"SELECT {BUCKET} AS time,\n" + ",\n".join(
              f"       count(*) FILTER (WHERE s.sla_{m} = 'met')::float\n"
              f"           / NULLIF(count(*) FILTER (WHERE s.sla_{m} IN ('met', 'breached')), 0) AS {m}"
              for m in ("turnaround", "ai_round_trip", "to_destinations"))
               + f"\nFROM qi_study s\nWHERE {STUDY_FILTERS}\nGROUP BY 1 ORDER BY 1"),
          description="met / (met + breached) per threshold; pending studies are not counted.",
          columns=("time", "turnaround", "ai_round_trip", "to_destinations")),
))

DASHBOARDS: tuple[Dashboard, ...] = (TURNAROUND, AI, FAILURES, VOLUMES, SLA)


def _variable(name: str, label: str, sql: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": sql,
        "definition": sql, "multi": True, "includeAll": True, "allValue": ALL, "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def templating() -> dict[str, Any]:
    since = "WHERE $__timeFilter(first_received_at)"
    return {"list": [
        {"name": "grain", "label": "Bucket", "type": "custom", "query": "day,week,month",
         "current": {"selected": True, "text": "day", "value": "day"},
         "options": [{"selected": v == "day", "text": v, "value": v} for v in ("day", "week", "month")]},
        _variable("modality", "Modality", f"SELECT DISTINCT modality FROM qi_study {since} AND modality IS NOT NULL"),
        _variable("source", "Source AET",
                  f"SELECT DISTINCT source_aet FROM qi_study {since} AND source_aet IS NOT NULL"),
        _variable("destination", "Destination", f"SELECT DISTINCT destination FROM qi_delivery {since}"),
        _variable("rule", "Rule", f"SELECT DISTINCT unnest(rules) FROM qi_study {since}"),
    ]}


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if panel.unit:
        defaults["unit"] = panel.unit
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": panel.options,
        "targets": [{"refId": "A", "datasource": DATASOURCE, "editorMode": "code", "format": panel.fmt,
                     "rawQuery": True, "rawSql": panel.sql}],
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    panels, x, y, row_h = [], 0, 0, 0
    for number, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(panel_json(panel, number, x, y))
        x, row_h = x + panel.width, max(row_h, panel.height)
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["qi", "routing-hub"], "timezone": "browser", "editable": False, "schemaVersion": 39,
        "version": 1, "refresh": "5m", "time": {"from": "now-30d", "to": "now"},
        "templating": templating(), "panels": panels, "annotations": {"list": []},
    }


def file_for(dashboard: Dashboard) -> Path:
    return OUT / f"{dashboard.uid.removeprefix('hub-')}.json"


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard_json(dashboard), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the QI dashboards for Grafana.")
    parser.add_argument("--check", action="store_true", help="exit 1 when a JSON file is not up to date")
    args = parser.parse_args(argv)
    stale = []
    for dashboard in DASHBOARDS:
        path, content = file_for(dashboard), render(dashboard)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != content:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
    if stale:
        print("stale: " + ", ".join(stale) + " (run stack/grafana/build_dashboards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
