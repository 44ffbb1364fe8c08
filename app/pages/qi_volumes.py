"""QI · Volumes: studies received by hour of day and weekday, by modality, by source
and by outcome, all in the configured time zone."""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import charts
from app.components.db import reading, show_error
from app.components.drill import kpi_link
from app.components.kpi import metric
from app.components.qi_filters import READ_TIMEOUT_MS, start_page
from core import qi
from core.qi import Drill

page = start_page("Volumes", "Studies first received, in the configured time zone.")
zone, flt, grain = page.zone, page.flt, page.grain

try:
    with reading(READ_TIMEOUT_MS) as conn:
        heat = qi.volume_heatmap(conn, flt, zone)
        by_modality = qi.volume(conn, flt, zone, grain=grain, group="modality")
        by_source = qi.volume(conn, flt, zone, grain=grain, group="source_aet")
        outcomes = qi.study_outcomes(conn, flt, zone, grain=grain)
        daily = qi.volume(conn, flt, zone, grain="day")
except SQLAlchemyError as exc:
    show_error("Volumes could not be read", exc)
    st.stop()

total = int(heat["studies"].sum()) if len(heat) else 0
days = (flt.end - flt.start).days + 1
active_days = int((daily["studies"] > 0).sum()) if len(daily) else 0
cols = st.columns(3)
with cols[0]:
    metric("Studies received", total)
    kpi_link(total, Drill(flt, "received"))
with cols[1]:
    # Over the days that received studies: a range reaching into the future, or a site that
    # is closed at weekends, does not dilute it. The calendar-day figure is in the help.
    metric("Per day (days with studies)", f"{total / active_days:.1f}" if active_days else None,
           help=f"{total} studies over the {active_days} day(s) in TZ that received any, of {days} calendar "
                f"day(s) in the range ({total / days:.1f} per calendar day).")
with cols[2]:
    routed = int(outcomes["routed"].sum()) if len(outcomes) else 0
    metric("Routed", routed)
    kpi_link(routed, Drill(flt, "routed"))

charts.chart_block(
    "Hour of day × weekday", charts.weekday_hour_heatmap(
        heat, lambda r: Drill(flt, "heat", lo=float(r["isodow"]), hi=float(r["hour"]))), heat,
    f"Studies by the local hour ({page.settings.tz}) and ISO weekday of their first instance; "
    "in the repeated autumn hour both passes count in that hour.", "volumes_heatmap", zone)

charts.chart_block(
    "By modality", charts.grouped_bars(by_modality, "bucket", "studies", "grp", grain=grain, drill=lambda r: Drill(
        flt, "received", grain=grain, bucket=r["bucket"], group="modality", grp=r["grp"])), by_modality,
    f"Studies per {grain} and modality (the study's original series modalities).", "volumes_modality", zone)

charts.chart_block(
    "By source AET", charts.grouped_bars(by_source, "bucket", "studies", "grp", grain=grain, drill=lambda r: Drill(
        flt, "received", grain=grain, bucket=r["bucket"], group="source_aet", grp=r["grp"])), by_source,
    f"Studies per {grain} and sending AE title.", "volumes_source", zone)

charts.chart_block(
    "By outcome", charts.stacked_bars(outcomes, "bucket", ["delivered", "failed", "in_progress", "no_delivery",
                                                           "unrouted"], y_title="studies", grain=grain,
                                  drill=lambda r: Drill(flt, "outcome", value=r["kind"], grain=grain,
                                                        bucket=r["bucket"])),
    outcomes,
    f"Studies per {grain} by where they are now: delivered, failed (a dead job), in progress, "
    "routed without a delivery, unrouted.", "volumes_outcome", zone)
