"""The study timeline as a plotly chart: the four workflow stages and the raw events.

Each reached stage is a marker on its own row, joined to the previous reached stage
by a bar whose label is the time it took, so a slow step stands out. Stages not yet
reached are listed as pending in the title rather than drawn at a made-up time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import plotly.graph_objects as go

from app.components.fmt import age
from core.queries import Stage
from core.states import EventType

STAGE_COLOURS = ("#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e")
EVENTS_ROW = "Events"
FAILURE_EVENTS = {EventType.DELIVERY_FAILED, EventType.DELIVERY_DEAD, EventType.AI_OVERDUE,
                  EventType.AI_RESULT_UNMATCHED, EventType.SENDER_REJECTED}


def _naive(value: datetime, zone: ZoneInfo) -> datetime:
    """Local wall-clock time for the x axis (plotly would otherwise mangle offsets)."""
    return value.astimezone(zone).replace(tzinfo=None)


def timeline_figure(stages: Sequence[Stage], events: Sequence[dict[str, Any]], zone: ZoneInfo) -> go.Figure:
    rows = [s.name for s in stages] + [EVENTS_ROW]
    fig = go.Figure()
    previous: Stage | None = None
    for stage, colour in zip(stages, STAGE_COLOURS, strict=False):
        if stage.at is None:
            continue
        if previous is not None and previous.at is not None:
            duration = (stage.at - previous.at).total_seconds()
            fig.add_trace(go.Scatter(
                x=[_naive(previous.at, zone), _naive(stage.at, zone)], y=[stage.name, stage.name],
                mode="lines", line={"width": 10, "color": colour}, opacity=0.35,
                hoverinfo="skip", showlegend=False,
            ))
            label = f"+{age(duration)}"
        else:
            label = "start"
        fig.add_trace(go.Scatter(
            x=[_naive(stage.at, zone)], y=[stage.name], mode="markers+text",
            marker={"size": 14, "color": colour}, text=[label], textposition="top center",
            name=stage.name, showlegend=False,
            hovertemplate=f"{stage.name}<br>%{{x|%Y-%m-%d %H:%M:%S}}<br>{stage.note}<extra></extra>",
        ))
        previous = stage
    if events:
        colours = ["#d62728" if e["type"] in FAILURE_EVENTS else "#7f7f7f" for e in events]
        hover = [f"{e['type']}" + (f" → {e['destination']}" if e.get("destination") else "") for e in events]
        fig.add_trace(go.Scatter(
            x=[_naive(e["at"], zone) for e in events], y=[EVENTS_ROW] * len(events), mode="markers",
            marker={"size": 9, "color": colours, "symbol": "line-ns-open", "line": {"width": 2}},
            text=hover, hovertemplate="%{text}<br>%{x|%Y-%m-%d %H:%M:%S}<extra></extra>", showlegend=False,
        ))
    pending = [s.name for s in stages if s.at is None and s.applies]
    title = "Pending: " + ", ".join(pending) if pending else "All stages reached"
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=300, margin={"l": 10, "r": 10, "t": 56, "b": 30},
        xaxis={"title": f"time ({zone.key})"},
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(rows)), "type": "category"},
    )
    # Keep every row visible even when a stage has no point yet.
    fig.add_trace(go.Scatter(x=[None] * len(rows), y=rows, mode="markers", showlegend=False, hoverinfo="skip"))
    return fig
