"""QI · SLA: the share of due studies within the configured thresholds, over time and by group.

A study is due for a metric when it has a value, or when the threshold has passed
since the stage started without one (that counts as a breach, so an undelivered
study is never silently left out). Studies still within the threshold are pending
and shown, not counted.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import charts
from app.components.db import reading, show_error
from app.components.drill import custom_data, kpi_link, with_drill
from app.components.fmt import age
from app.components.kpi import sla_metric
from app.components.qi_filters import READ_TIMEOUT_MS, group_picker, start_page
from core import qi
from core.qi import Drill

LABELS = {"turnaround": "Turnaround", "ai_round_trip": "AI round trip", "to_destinations": "To destinations"}
SETTING = {"turnaround": "SLA_TURNAROUND_S", "ai_round_trip": "SLA_AI_ROUND_TRIP_S",
           "to_destinations": "SLA_TO_DESTINATIONS_S"}

page = start_page("SLA", "Compliance = met / (met + breached). Studies are counted on the day (in TZ) they were "
                  "first received; pending studies are shown but not counted.")
zone, flt, grain = page.zone, page.flt, page.grain
group = group_picker("qi_sla_group")

try:
    with reading(READ_TIMEOUT_MS) as conn:
        totals = qi.sla_compliance(conn, flt, zone, grain="all")
        trend = qi.sla_compliance(conn, flt, zone, grain=grain)
        by_group = qi.sla_compliance(conn, flt, zone, grain="all", group=group) if group != "none" else None
except SQLAlchemyError as exc:
    show_error("SLA figures could not be read", exc)
    st.stop()

cols = st.columns(len(qi.SLA_METRICS))
for col, name in zip(cols, qi.SLA_METRICS, strict=True):
    threshold = page.thresholds[f"sla_{name}_s"]
    with col:
        row = totals[totals["metric"] == name]
        sla_metric(f"{LABELS[name]} ≤ {age(threshold)}", row, f" ({SETTING[name]})")
        kpi_link(int(row["n_breached"].iloc[0]) if len(row) else 0, Drill(flt, f"sla_{name}", value="breached"),
                 "breached")

charts.chart_block(
    "Compliance over time", charts.rate_trend(
        trend.assign(label=trend["metric"].map(LABELS)), "compliance", color="label", grain=grain, count="n_due",
        drill=lambda r: Drill(flt, f"sla_{r['metric']}", value="due", grain=grain, bucket=r["bucket"])), trend,
    f"Per {grain}: met / (met + breached) for each threshold; n_due is the denominator (a point opens "
    "those due studies).",
    "sla_trend", zone)

if by_group is not None:
    fig = None
    if not by_group.empty:
        data = with_drill(by_group.assign(percent=by_group["compliance"] * 100, label=by_group["metric"].map(LABELS)),
                          lambda r: Drill(flt, f"sla_{r['metric']}", value="due", group=group, grp=r["grp"]),
                          "n_due")
        fig = px.bar(data, x="grp", y="percent", color="label", barmode="group", hover_data=["n_met", "n_due"],
                     custom_data=custom_data(data))
        fig.update_yaxes(ticksuffix=" %", range=[0, 100])
        fig.update_xaxes(title=None)
    charts.chart_block(
        f"By {group}", fig, by_group,
        "Compliance of the studies in each group (a study in several destinations or rules counts in each).",
        f"sla_by_{group}", zone)

fig = None
if not totals.empty:
    states = totals.melt(id_vars=["metric"], value_vars=["n_met", "n_breached", "n_pending"], var_name="state",
                         value_name="studies")
    states = with_drill(states.assign(label=states["metric"].map(LABELS)), lambda r: Drill(
        flt, f"sla_{r['metric']}", value=str(r["state"]).removeprefix("n_")), "studies")
    fig = px.bar(states, x="label", y="studies", color="state", barmode="stack", custom_data=custom_data(states))
    fig.update_xaxes(title=None)
charts.chart_block(
    "Met, breached and pending", fig, totals,
    "Breached includes studies without a value once the threshold has passed (e.g. never delivered).",
    "sla_counts", zone)
