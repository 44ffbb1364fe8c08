"""QI · Turnaround: first instance received -> last required delivery, with its stages.

Distribution, the trend of p50/p90/p95 against the SLA, a breakdown by a chosen
dimension, the time to each destination, and where the time goes stage by stage.
All numbers come from the QI views through core.qi (one definition, also used by the
CLI report and Grafana).
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import charts
from app.components.db import reading, show_error
from app.components.drill import custom_data, kpi_link, with_drill
from app.components.fmt import age
from app.components.kpi import metric, sla_metric
from app.components.qi_filters import READ_TIMEOUT_MS, group_picker, start_page
from core import qi
from core.qi import Drill
from core.states import Purpose

page = start_page("Turnaround", "From the first instance received to the last required delivery. "
                  "Studies are counted on the day (in TZ) they were first received.")
zone, flt, grain = page.zone, page.flt, page.grain
sla_s = float(page.thresholds["sla_turnaround_s"])
group = group_picker("qi_turnaround_group")


def stage_drill(stage: str, **where: object) -> Drill:
    """The studies with a value for `stage` (bucket, group or bin in `where`)."""
    return Drill(flt, "stage", value=stage, **where)  # type: ignore[arg-type]

try:
    with reading(READ_TIMEOUT_MS) as conn:
        overall = qi.stage_stats(conn, flt, zone, grain="all")
        turnaround = overall[overall["stage"] == "turnaround"]
        p95 = float(turnaround["p95"].iloc[0]) if len(turnaround) else sla_s
        upper = max(sla_s * 1.5, p95 * 1.5, 60.0)
        bin_s = max(10.0, round(upper / 40 / 10) * 10)
        hist = qi.stage_histogram(conn, flt, zone, stage="turnaround", bin_s=bin_s, max_s=upper)
        trend = qi.stage_stats(conn, flt, zone, grain=grain, stages=["turnaround"])
        by_group = (qi.stage_stats(conn, flt, zone, grain="all", group=group, stages=["turnaround"])
                    if group != "none" else pd.DataFrame())
        sla = qi.sla_compliance(conn, flt, zone, grain="all")
        per_destination = qi.delivery_times(conn, flt, zone)
except SQLAlchemyError as exc:
    show_error("Turnaround figures could not be read", exc)
    st.stop()

row = turnaround.iloc[0] if len(turnaround) else None
sla_row = sla[sla["metric"] == "turnaround"]
cols = st.columns(6)
values = (("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("max", "max"))
with cols[0]:
    metric("Delivered studies", int(row["n"]) if row is not None else 0, help="Studies with a turnaround.")
    kpi_link(int(row["n"]) if row is not None else 0, stage_drill("turnaround"))
for col, (label, key) in zip(cols[1:5], values, strict=True):
    with col:
        metric(label, age(row[key]) if row is not None else None)
with cols[5]:
    sla_metric(f"Within {age(sla_s)}", sla_row)
    kpi_link(int(sla_row["n_breached"].iloc[0]) if len(sla_row) else 0,
             Drill(flt, "sla_turnaround", value="breached"), "breached")

charts.chart_block(
    "Distribution", charts.histogram(hist, bin_s=bin_s, sla_s=sla_s, drill=lambda r: stage_drill(
        "turnaround", lo=float(r["bin_start"]), bin_s=bin_s, max_s=upper)), hist,
    f"Studies per {age(bin_s)} bin of turnaround; the last bin holds every study of {age(upper)} or more. "
    + qi.DEFINITIONS["turnaround"], "turnaround_distribution", zone)

charts.chart_block(
    "Trend of p50, p90 and p95", charts.percentile_trend(
        trend, sla_s=sla_s, grain=grain, drill=lambda r: stage_drill("turnaround", grain=grain, bucket=r["bucket"])),
    trend,
    f"Percentiles (percentile_cont) of turnaround per {grain}, dashed line: SLA_TURNAROUND_S.",
    "turnaround_trend", zone)

if group != "none":
    fig = None
    if not by_group.empty:
        long = with_drill(charts.minutes(by_group, charts.PERCENTILES).melt(
            id_vars=["grp", "n"], value_vars=list(charts.PERCENTILES), var_name="percentile", value_name="minutes"),
            lambda r: stage_drill("turnaround", group=group, grp=r["grp"]), "n")
        fig = px.bar(long, x="grp", y="minutes", color="percentile", barmode="group", hover_data=["n"],
                     custom_data=custom_data(long))
        fig.add_hline(y=sla_s / 60, line_dash="dash", line_color="red")
    charts.chart_block(
        f"By {group}", fig, by_group,
        "Turnaround percentiles of the studies in each group (a study routed to several destinations "
        "or by several rules counts in each).", f"turnaround_by_{group}", zone)

deliveries = per_destination[per_destination["purpose"] == Purpose.DELIVERY]
fig = None
if not deliveries.empty:
    long = with_drill(charts.minutes(deliveries.rename(columns={"turnaround_p50": "p50", "turnaround_p90": "p90",
                                                                "turnaround_p95": "p95"}), charts.PERCENTILES).melt(
        id_vars=["destination", "purpose", "n"], value_vars=list(charts.PERCENTILES), var_name="percentile",
        value_name="minutes"), lambda r: Drill(flt, "delivered_to", group="destination", grp=r["destination"],
                                                purpose=r["purpose"]), "n")
    fig = px.bar(long, x="destination", y="minutes", color="percentile", barmode="group", hover_data=["n"],
                 custom_data=custom_data(long))
charts.chart_block(
    "Time to each destination", fig, deliveries,
    "Per destination: first received -> that destination's required deliveries all succeeded.",
    "turnaround_per_destination", zone)

stages = overall[overall["stage"] != "turnaround"]
fig = charts.stage_bars(stages, qi.STAGES, lambda r: stage_drill(r["stage"]))
charts.chart_block(
    "Where the time goes", fig, overall,
    "Percentiles of each stage: wait_stable, to_ai, ai_round_trip, result_settle, to_destinations "
    "(docs/qi.md, 'Per study'); each over the studies that reached that stage.", "turnaround_stages", zone)
