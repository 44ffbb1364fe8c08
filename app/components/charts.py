"""Plotly charts for the QI pages: every chart has its definition and a "download data" button.

`chart_block` is the only way a QI page shows a chart, which is how the rule "each
chart explains its definition in one line and offers its data" is kept. Buckets are
local calendar days, weeks (starting Monday) or months in the configured TZ, so the
x axes are plain dates and need no conversion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from app.components.drill import DrillFn, custom_data, drill_of_selection, open_studies, with_drill
from core.reports import frame_bytes

PERCENTILES: tuple[str, ...] = ("p50", "p90", "p95")
TICK_FORMATS = {"day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%b %Y"}
MAX_STEPPED_TICKS = 12  # over a span of up to this many buckets, one tick per bucket
WEEKDAYS: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "legend": {"orientation": "h", "y": -0.2}}


def chart_block(title: str, fig: go.Figure | None, data: pd.DataFrame, definition: str, key: str,
                zone: ZoneInfo, *, empty: str = "No data for these filters.") -> None:
    """Title, the chart (or a plain note: `empty`), its one-line definition and its data.

    A chart whose elements carry a drill (app.components.drill) is clickable: a click on a
    bar, point or cell opens the Studies list of the studies behind it.
    """
    st.markdown(f"**{title}**")
    drillable = False
    if fig is None or data.empty:
        st.info(empty)
    else:
        fig.update_layout(**_LAYOUT)
        drillable = any(getattr(trace, "customdata", None) is not None for trace in fig.data)
        if drillable:
            fig.update_layout(clickmode="event+select")
            event = st.plotly_chart(fig, key=f"chart_{key}", width="stretch", on_select="rerun",
                                    selection_mode="points")
            query = drill_of_selection(event)
            if query:
                open_studies(query)
        else:
            st.plotly_chart(fig, key=f"chart_{key}", width="stretch")
    st.caption(definition + (" Click an element to list its studies." if drillable else ""))
    download_data(data, key, zone)


def download_data(data: pd.DataFrame, key: str, zone: ZoneInfo, label: str = "Download data") -> None:
    """A CSV download of exactly what the chart shows (generated when clicked)."""
    st.download_button(
        label, data=lambda: frame_bytes(data, "csv", zone), file_name=f"{key}.csv", mime="text/csv",
        key=f"download_{key}", on_click="ignore", icon=":material/download:", disabled=data.empty,
    )


def all_zero(frame: pd.DataFrame, columns: Sequence[str]) -> bool:
    """No row, or nothing but zeros in `columns` (a chart of it would be an empty -1..1 axis)."""
    return frame.empty or not any(frame[c].fillna(0).astype(float).abs().sum() for c in columns)


def time_axis(fig: go.Figure, buckets: Iterable[Any], grain: str | None = None) -> go.Figure:
    """An x axis of whole buckets (day, week or month, in TZ).

    Plotly picks its ticks from the data's span; one bucket has no span, so it labels
    milliseconds around it. Here ticks step by the bucket while there are few of them,
    are written as dates, and a lone bucket gets a bucket's width of room on each side.
    """
    values = sorted({pd.Timestamp(b) for b in buckets if pd.notna(b)})
    if not values:
        return fig
    grain = grain if grain in TICK_FORMATS else _grain_of(values)
    step = pd.DateOffset(months=1) if grain == "month" else pd.Timedelta(days=7 if grain == "week" else 1)
    axis: dict[str, Any] = {"type": "date", "tickformat": TICK_FORMATS[grain], "title": None}
    if values[-1] <= values[0] + step * MAX_STEPPED_TICKS:  # (a longer span: plotly's ticks, days apart at least)
        axis["dtick"] = "M1" if grain == "month" else int(pd.Timedelta(step).total_seconds() * 1000)
        axis["tick0"] = values[0].strftime("%Y-%m-%d")
    if len(values) == 1:
        axis["range"] = [(values[0] - step).strftime("%Y-%m-%d"), (values[0] + step).strftime("%Y-%m-%d")]
    fig.update_xaxes(**axis)
    width_ms = (values[0] + step - values[0]).total_seconds() * 1000 * 0.8
    fig.update_traces(width=width_ms, selector={"type": "bar"})
    return fig


def _grain_of(values: Sequence[pd.Timestamp]) -> str:
    if len(values) < 2:
        return "day"
    gap = min(b - a for a, b in zip(values, values[1:], strict=False)).days
    return "month" if gap >= 28 else "week" if gap >= 7 else "day"


def minutes(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy with the given second columns converted to minutes (for readable axes)."""
    out = frame.copy()
    for column in columns:
        out[column] = out[column].astype(float) / 60.0
    return out


def percentile_trend(stats: pd.DataFrame, *, sla_s: float | None = None, title_y: str = "minutes",
                     color: str | None = None, grain: str | None = None,
                     drill: DrillFn | None = None) -> go.Figure | None:
    """p50, p90 and p95 per bucket (one line each), with the SLA threshold as a line; a point
    drills to the `n` studies of its bucket."""
    if stats.empty:
        return None
    long = with_drill(minutes(stats, PERCENTILES).melt(
        id_vars=[c for c in ("bucket", "grp", "stage", "n") if c in stats.columns],
        value_vars=list(PERCENTILES), var_name="percentile", value_name=title_y), drill, "n")
    if color:
        long["series"] = long[color].astype(str) + " " + long["percentile"]
        fig = px.line(long, x="bucket", y=title_y, color="series", markers=True, hover_data=["n"],
                      custom_data=custom_data(long))
    else:
        fig = px.line(long, x="bucket", y=title_y, color="percentile", markers=True, hover_data=["n"],
                      custom_data=custom_data(long))
    if sla_s is not None:
        fig.add_hline(y=sla_s / 60.0, line_dash="dash", line_color="red",
                      annotation_text=f"SLA {sla_s / 60:g} min", annotation_position="top left")
    return time_axis(fig, stats["bucket"], grain)


def histogram(hist: pd.DataFrame, *, bin_s: float, sla_s: float | None = None,
              drill: DrillFn | None = None) -> go.Figure | None:
    """Bars of a binned distribution (seconds -> minutes); the overflow bin is labelled; a bar
    drills to its `n` studies."""
    if hist.empty:
        return None
    frame = with_drill(hist, drill, "n")
    frame["from_min"] = frame["bin_start"].astype(float) / 60.0
    frame["label"] = [
        f"≥ {s / 60:g} min" if e == float("inf") else f"{s / 60:g}–{e / 60:g} min"
        for s, e in zip(frame["bin_start"], frame["bin_end"], strict=True)
    ]
    fig = px.bar(frame, x="from_min", y="n", hover_data=["label"], labels={"from_min": "minutes", "n": "studies"},
                 custom_data=custom_data(frame))
    fig.update_traces(width=bin_s / 60.0 * 0.95, offset=0)
    if sla_s is not None:
        fig.add_vline(x=sla_s / 60.0, line_dash="dash", line_color="red",
                      annotation_text=f"SLA {sla_s / 60:g} min")
    return fig


def rate_trend(frame: pd.DataFrame, rate: str, *, color: str | None = None, target: float | None = None,
               y_title: str = "share", grain: str | None = None, drill: DrillFn | None = None,
               count: str | None = None) -> go.Figure | None:
    """A rate (0..1) per bucket as percentages, optionally one line per group.

    The y axis starts at 0 % and ends at 105 % for rates above one half, else a little above
    the highest (at least 5 %), so a flat 0 % line sits on a readable axis, not on -1..1.
    """
    if frame.empty:
        return None
    data = with_drill(frame, drill, count)
    data[y_title] = data[rate].astype(float) * 100.0
    fig = px.line(data, x="bucket", y=y_title, color=color, markers=True, custom_data=custom_data(data),
                  hover_data=[count] if count else None)
    peak = float(data[y_title].max()) if data[y_title].notna().any() else 0.0
    upper = 105.0 if peak > 50 else max(5.0, peak * 1.2)
    fig.update_yaxes(ticksuffix=" %", range=[0, upper])
    if target is not None:
        fig.add_hline(y=target * 100.0, line_dash="dot", line_color="grey")
    return time_axis(fig, data["bucket"], grain)


def stacked_bars(frame: pd.DataFrame, x: str, columns: Sequence[str], *, y_title: str = "count",
                 grain: str | None = None, drill: DrillFn | None = None) -> go.Figure | None:
    """One bar per `x`, stacked by column ("kind"); a segment drills to its studies."""
    if all_zero(frame, columns):
        return None
    long = with_drill(frame.melt(id_vars=[x], value_vars=list(columns), var_name="kind", value_name=y_title),
                      drill, y_title)
    fig = px.bar(long, x=x, y=y_title, color="kind", custom_data=custom_data(long))
    fig.update_xaxes(title=None)
    return time_axis(fig, frame[x], grain) if x == "bucket" else fig


def stage_bars(stages: pd.DataFrame, order: Sequence[str], drill: DrillFn | None = None) -> go.Figure | None:
    """Percentiles of each stage as grouped bars, stages in workflow `order` (qi.STAGES/AI_STAGES);
    a bar drills to the `n` studies that reached its stage."""
    if stages.empty:
        return None
    present = set(stages["stage"])
    ordered = stages.set_index("stage").loc[[s for s in order if s in present]].reset_index()
    long = with_drill(minutes(ordered, PERCENTILES).melt(
        id_vars=["stage", "n"], value_vars=list(PERCENTILES), var_name="percentile", value_name="minutes"),
        drill, "n")
    return px.bar(long, x="stage", y="minutes", color="percentile", barmode="group", hover_data=["n"],
                  custom_data=custom_data(long))


def grouped_bars(frame: pd.DataFrame, x: str, y: str, color: str | None = None,
                 grain: str | None = None, drill: DrillFn | None = None) -> go.Figure | None:
    """Counts `y` per `x`, stacked by `color`; a bar drills to its `y` studies."""
    if all_zero(frame, [y]):
        return None
    frame = with_drill(frame, drill, y)
    fig = px.bar(frame, x=x, y=y, color=color, barmode="stack", custom_data=custom_data(frame))
    fig.update_xaxes(title=None)
    return time_axis(fig, frame[x], grain) if x == "bucket" else fig


def weekday_hour_heatmap(heat: pd.DataFrame, drill: DrillFn | None = None) -> go.Figure | None:
    """Studies per local hour (x) and ISO weekday (y), every cell shown (zeros included); a
    cell with studies drills to them."""
    if heat.empty:
        return None
    grid = pd.DataFrame(0, index=range(1, 8), columns=range(24))
    for row in heat.itertuples(index=False):
        grid.loc[int(row.isodow), int(row.hour)] = int(row.studies)
    cells = None
    if drill is not None:
        cells = [[with_cell(drill, day, hour, int(grid.loc[day, hour])) for hour in range(24)] for day in range(1, 8)]
    fig = go.Figure(go.Heatmap(z=grid.values, x=[f"{h:02d}" for h in range(24)], y=list(WEEKDAYS),
                               customdata=cells, colorscale="Blues",
                               hovertemplate="%{y} %{x}:00 — %{z} studies<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="hour of day")
    return fig


def with_cell(drill: DrillFn, isodow: int, hour: int, studies: int) -> list[str | int]:
    """customdata of one heatmap cell: its drill and count (an empty cell has no drill)."""
    marked = with_drill(pd.DataFrame([{"isodow": isodow, "hour": hour, "studies": studies}]), drill, "studies")
    return [marked["drill_q"].iloc[0] if studies else "", studies]
