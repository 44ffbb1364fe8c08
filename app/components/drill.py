"""Drill-down (issue 16): every QI number leads to the Studies list of the studies it counts.

A number becomes a `core.qi.Drill` (the page's filters and window, the measure, and
the bucket, group or bin it sits in); the Studies page reads it from its URL and lists
`qi_drill_studies` (db/sql), the same views and filters the number came from. KPIs get a
link under them; chart elements carry their drill in plotly's customdata
(`[query string, count]`) and a click on one opens the Studies list
(`app.components.charts.chart_block`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from core.qi import Drill

STUDIES_PAGE = "pages/studies.py"
STUDIES_URL = "studies"  # the page's url path (relative links in tables)
# A chart row -> the drill of the element it draws, or None when it has none.
DrillFn = Callable[[Mapping[str, Any]], Drill | None]


def query_string(drill: Drill) -> str:
    return urlencode(drill.query(), doseq=True)


def studies_url(drill: Drill) -> str:
    """A relative link to the Studies list of `drill` (for LinkColumn tables)."""
    return f"{STUDIES_URL}?{query_string(drill)}"


def parse_query(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=False)


def kpi_link(count: int | None, drill: Drill, noun: str = "studies") -> None:
    """'N studies' under a KPI, opening their list; nothing when there are none."""
    if not count:
        return
    try:
        st.page_link(STUDIES_PAGE, label=counted(int(count), noun), query_params=drill.query(),
                     icon=":material/list:", help="List these studies (same filters and window).")
    except StreamlitPageNotFoundError:  # the page run on its own, outside app/main.py's navigation
        st.caption(counted(int(count), noun))


CUSTOM = ["drill_q", "drill_n"]  # plotly custom_data columns: the query and the count shown


def counted(count: int, noun: str = "studies") -> str:
    """'1 study', '3 studies', '1 study with failed attempts'."""
    return f"{count} {noun.replace('studies', 'study', 1) if count == 1 else noun}"


def with_drill(frame: pd.DataFrame, drill: DrillFn | None, count: str | None) -> pd.DataFrame:
    """`frame` with the CUSTOM columns (query string, count) for plotly's custom_data.

    `count` names the column holding what the element shows (the Studies list's length);
    None when the element shows something else (attempts), so no count is promised (-1).
    """
    if drill is None or frame.empty:
        return frame
    out = frame.copy()
    queries: list[str] = []
    counts: list[int] = []
    for row in out.to_dict("records"):
        made = drill(row)
        n = row.get(count) if count else None
        queries.append(query_string(made) if made else "")
        counts.append(-1 if n is None or pd.isna(n) else int(n))
    out["drill_q"], out["drill_n"] = queries, counts
    return out


def custom_data(frame: pd.DataFrame) -> list[str] | None:
    """px's custom_data argument: the drill columns when `with_drill` added them."""
    return CUSTOM if "drill_q" in frame.columns else None


def drill_of_selection(event: Any) -> dict[str, list[str]] | None:
    """The query of the first selected chart element that carries a drill, if any."""
    selection = event.get("selection") if isinstance(event, Mapping) else None  # PlotlyState is a dict
    points = (selection.get("points") if isinstance(selection, Mapping) else None) or []
    for point in points:
        data = point.get("customdata") if isinstance(point, Mapping) else None
        if isinstance(data, list | tuple) and data and isinstance(data[0], str) and data[0]:
            return parse_query(data[0])
    return None


def open_studies(query: Mapping[str, list[str]]) -> None:
    st.switch_page(STUDIES_PAGE, query_params={k: v if len(v) > 1 else v[0] for k, v in query.items()})
