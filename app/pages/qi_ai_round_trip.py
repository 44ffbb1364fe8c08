"""QI · AI round trip: AI send succeeded -> first AI-result instance back.

Distribution and trend against the SLA, the overdue and no-result rates (over the
studies sent to the AI), the stages around the AI, and the overdue studies.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import charts
from app.components.db import reading, show_error
from app.components.drill import kpi_link
from app.components.fmt import age, local
from app.components.kpi import metric
from app.components.qi_filters import READ_TIMEOUT_MS, start_page
from core import qi
from core.qi import Drill

page = start_page("AI round trip", "From the AI send succeeding to the first AI-result instance received "
                  "(a result that came before that success answered an earlier attempt and is measured from "
                  "that attempt's start). Studies are counted on the day (in TZ) they were first received.")
zone, flt, grain = page.zone, page.flt, page.grain
sla_s = float(page.thresholds["sla_ai_round_trip_s"])
timeout_s = float(page.thresholds["ai_result_timeout_s"])

try:
    with reading(READ_TIMEOUT_MS) as conn:
        stages = qi.stage_stats(conn, flt, zone, grain="all", stages=list(qi.AI_STAGES))
        rt = stages[stages["stage"] == "ai_round_trip"]
        p95 = float(rt["p95"].iloc[0]) if len(rt) else sla_s
        upper = max(timeout_s * 1.5, sla_s * 1.5, p95 * 1.5)
        bin_s = max(10.0, round(upper / 40 / 10) * 10)
        hist = qi.stage_histogram(conn, flt, zone, stage="ai_round_trip", bin_s=bin_s, max_s=upper)
        trend = qi.stage_stats(conn, flt, zone, grain=grain, stages=["ai_round_trip"])
        totals = qi.ai_outcomes(conn, flt, zone, grain="all")
        rates = qi.ai_outcomes(conn, flt, zone, grain=grain)
        overdue = qi.ai_overdue_studies(conn, flt, zone, limit=200)
except SQLAlchemyError as exc:
    show_error("AI figures could not be read", exc)
    st.stop()

t = totals.iloc[0] if len(totals) else None


def ai_count(name: str) -> int:
    return int(t[name]) if t is not None else 0


def ai_drill(value: str) -> Drill:
    return Drill(flt, "ai", value=value)


def stage_drill(stage: str, **where: object) -> Drill:
    return Drill(flt, "stage", value=stage, **where)  # type: ignore[arg-type]


row = rt.iloc[0] if len(rt) else None
cols = st.columns(6)
with cols[0]:
    metric("Sent to the AI", ai_count("sent"), help="Denominator of the rates: studies whose AI send succeeded.")
    kpi_link(ai_count("sent"), ai_drill("sent"))
with cols[1]:
    metric("Result back", ai_count("with_result"))
    kpi_link(ai_count("with_result"), ai_drill("with_result"))
with cols[2]:
    metric("Overdue", f"{t['overdue_rate']:.1%}" if t is not None and t["sent"] else None,
           help=f"Result later than AI_RESULT_TIMEOUT ({age(timeout_s)}) or missing past it: "
                f"{int(t['overdue']) if t is not None else 0} studies.")
    kpi_link(ai_count("overdue"), ai_drill("overdue"))
with cols[3]:
    metric("No result", f"{t['no_result_rate']:.1%}" if t is not None and t["sent"] else None,
           help="Sent, and no AI-result instance received (yet).")
    kpi_link(ai_count("no_result"), ai_drill("no_result"))
with cols[4]:
    metric("p50", age(row["p50"]) if row is not None else None)
with cols[5]:
    metric("p90", age(row["p90"]) if row is not None else None)

charts.chart_block(
    "Distribution", charts.histogram(hist, bin_s=bin_s, sla_s=sla_s, drill=lambda r: stage_drill(
        "ai_round_trip", lo=float(r["bin_start"]), bin_s=bin_s, max_s=upper)), hist,
    f"Studies per {age(bin_s)} bin; the last bin holds every round trip of {age(upper)} or more. "
    + qi.DEFINITIONS["ai_round_trip"], "ai_round_trip_distribution", zone)

charts.chart_block(
    "Trend of p50, p90 and p95", charts.percentile_trend(
        trend, sla_s=sla_s, grain=grain,
        drill=lambda r: stage_drill("ai_round_trip", grain=grain, bucket=r["bucket"])), trend,
    f"Percentiles of the AI round trip per {grain}; dashed line: SLA_AI_ROUND_TRIP_S.", "ai_round_trip_trend", zone)

rate_long = pd.DataFrame()
if not rates.empty:
    rate_long = rates.melt(id_vars=["bucket", "sent", "overdue", "no_result"],
                           value_vars=["overdue_rate", "no_result_rate"], var_name="rate", value_name="share")
    # each point drills to the studies of its numerator: overdue, or without a result
    rate_long["studies"] = [o if r == "overdue_rate" else n for r, o, n in
                            zip(rate_long["rate"], rate_long["overdue"], rate_long["no_result"], strict=True)]
charts.chart_block(
    "Overdue and no-result rates", charts.rate_trend(
        rate_long, "share", color="rate", grain=grain, count="studies",
        drill=lambda r: Drill(flt, "ai", value=str(r["rate"]).removesuffix("_rate"), grain=grain,
                              bucket=r["bucket"])), rates,
    "Over the studies sent to the AI in each bucket: overdue = result later than AI_RESULT_TIMEOUT or "
    "missing past it; no result = nothing back yet.", "ai_rates", zone)

fig = charts.stage_bars(stages, qi.AI_STAGES, lambda r: stage_drill(r["stage"]))
charts.chart_block(
    "Breakdown by stage", fig, stages,
    "to_ai: stable -> AI send succeeded; ai_round_trip: -> first result instance; "
    "result_settle: -> result series stable.", "ai_stages", zone)

st.markdown("**Overdue studies**")
if overdue.empty:
    st.info("No overdue study for these filters.")
else:
    shown = overdue.assign(
        ai_sent_at=[local(v, zone) for v in overdue["ai_sent_at"]],
        ai_result_at=[local(v, zone) if pd.notna(v) else "" for v in overdue["ai_result_at"]],
        waited=[age(v) for v in overdue["waited_s"]],
    ).drop(columns=["waited_s", "ai_round_trip_s"]).rename(
        columns={"ai_sent_at": f"ai_sent_at ({zone.key})", "ai_result_at": f"ai_result_at ({zone.key})"})
    st.dataframe(shown, hide_index=True, width="stretch")
st.caption(f"Sent to the AI and late (result after {age(timeout_s)}) or still without a result past it; "
           "newest send first, at most 200.")
charts.download_data(overdue, "ai_overdue_studies", zone)
