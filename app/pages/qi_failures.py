"""QI · Failures: failed studies over routed studies, failed sends per destination, failed
attempts over time, and the most frequent errors. Every rate names its denominator."""

from __future__ import annotations

import plotly.express as px
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.components import charts
from app.components.db import reading, show_error
from app.components.drill import custom_data, kpi_link, studies_url, with_drill
from app.components.fmt import local
from app.components.kpi import metric
from app.components.qi_filters import READ_TIMEOUT_MS, start_page
from core import qi
from core.qi import Drill

page = start_page("Failures", "Studies and send attempts that failed. Study and destination figures count studies "
                  "by the day they were received; attempt figures count attempts by the time they ended.")
zone, flt, grain = page.zone, page.flt, page.grain

try:
    with reading(READ_TIMEOUT_MS) as conn:
        studies = qi.study_outcomes(conn, flt, zone, grain=grain)
        destinations = qi.delivery_outcomes(conn, flt, zone)
        attempts = qi.attempt_failures(conn, flt, zone, grain=grain)
        errors = qi.top_errors(conn, flt, zone, limit=10)
        failed_attempt_studies = qi.drill_count(conn, Drill(flt, "attempt_failed"), zone)
except SQLAlchemyError as exc:
    show_error("Failure figures could not be read", exc)
    st.stop()

routed, failed = int(studies["routed"].sum()), int(studies["failed"].sum())
n_attempts, n_failed = int(attempts["attempts"].sum()), int(attempts["failed"].sum())
cols = st.columns(4)
with cols[0]:
    metric("Routed studies", routed, help="Denominator: studies a rule routed (unrouted ones excluded).")
    kpi_link(routed, Drill(flt, "routed"))
with cols[1]:
    metric("Failed studies", f"{failed} ({failed / routed:.1%})" if routed else failed,
           help="Routed studies with a dead job (retries exhausted), over routed studies.")
    kpi_link(failed, Drill(flt, "outcome", value="failed"))
with cols[2]:
    metric("Send attempts", n_attempts, help="Attempts that ended (succeeded, failed or dead).")
with cols[3]:
    metric("Failed attempts", f"{n_failed} ({n_failed / n_attempts:.1%})" if n_attempts else n_failed,
           help="Failed or dead attempts, over attempts that ended.")
    kpi_link(failed_attempt_studies, Drill(flt, "attempt_failed"), "studies with failed attempts")

charts.chart_block(
    "Study failure rate", charts.rate_trend(
        studies, "failure_rate", grain=grain, count="failed",
        drill=lambda r: Drill(flt, "outcome", value="failed", grain=grain, bucket=r["bucket"])) if failed else None,
    studies,
    f"Per {grain}: routed studies with a dead job / routed studies (hover the data for both counts).",
    "failures_study_rate", zone,
    empty=f"No failed study for these filters (0 of {routed} routed)." if routed else "No routed study for these filters.")

fig = None
if not charts.all_zero(destinations, ["failed"]):
    data = with_drill(destinations.assign(
        percent=destinations["failure_rate"].astype(float) * 100,
        label=[f"{f} / {n}" for f, n in zip(destinations["failed"], destinations["sends"], strict=True)]),
        lambda r: Drill(flt, "delivery", value="failed", group="destination", grp=r["destination"],
                        purpose=r["purpose"]), "failed")
    fig = px.bar(data, x="destination", y="percent", text="label", color="purpose",
                 hover_data=["sends", "failed", "in_progress"], custom_data=custom_data(data))
    fig.update_yaxes(ticksuffix=" %", rangemode="tozero", title="failed sends")
    fig.update_xaxes(title=None)
charts.chart_block(
    "By destination", fig, destinations,
    "Share of the required sends of studies to each destination (cancelled ones excluded) with a dead job: "
    "failed / sends, labelled on each bar.", "failures_by_destination", zone,
    empty="No failed send for these filters." if not destinations.empty else "No data for these filters.")

fig = None
if not charts.all_zero(attempts, ["failed"]):
    # a bar counts attempts, not studies: it opens the studies those attempts belong to
    data = with_drill(attempts, lambda r: Drill(flt, "attempt_failed", grain=grain, bucket=r["bucket"],
                                                group="destination", grp=r["destination"]), None)
    fig = px.bar(data, x="bucket", y="failed", color="destination", hover_data=["attempts", "failure_rate"],
                 custom_data=custom_data(data))
    charts.time_axis(fig, attempts["bucket"], grain)
charts.chart_block(
    "Failed attempts over time", fig, attempts,
    f"Per {grain} of the attempt's end and destination: failed or dead attempts; "
    "failure_rate = failed / attempts that ended. A bar opens the studies of its attempts.", "failures_attempts", zone,
    empty=f"No failed attempt for these filters (0 of {n_attempts})." if n_attempts else "No data for these filters.")

st.markdown("**Top errors**")
if errors.empty:
    st.info("No failed attempt for these filters.")
else:
    shown = errors[["error", "failed", "share", "dead", "jobs", "studies", "destinations", "first_at", "last_at"]].assign(
        share=[f"{v:.1%}" for v in errors["share"]],
        destinations=[", ".join(v) for v in errors["destinations"]],
        first_at=[local(v, zone) for v in errors["first_at"]],
        last_at=[local(v, zone) for v in errors["last_at"]],
        # a link to the studies of each error; it shows their count (n, ignored by the Studies page)
        studies=[f"{studies_url(Drill(flt, 'error', value=e))}&n={n}"
                 for e, n in zip(errors["error"], errors["studies"], strict=True)],
    ).rename(columns={"first_at": f"first_at ({zone.key})", "last_at": f"last_at ({zone.key})"})
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "studies": st.column_config.LinkColumn("studies", display_text=r"&n=(\d+)$",
                                               help="The studies of these failed attempts (opens their list)."),
        "error": st.column_config.TextColumn("error", width="large")})
st.caption("First line of each failed attempt's error, most frequent first; share = of all failed attempts "
           "in the range.")
charts.download_data(errors, "failures_top_errors", zone)
