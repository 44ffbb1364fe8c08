"""KPI cards and health badges for the Overview.

A card always shows a measured value or says plainly that it could not measure one;
nothing here has a default that could be mistaken for "healthy".
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.elements.metric import Value as MetricValue


def health_card(name: str, up: bool, detail: str, *, warn: bool = False) -> None:
    """A bordered card: green Up, orange Degraded or red Down, with the evidence."""
    with st.container(border=True):
        if not up:
            badge = ":red[● Down]"
        elif warn:
            badge = ":orange[● Degraded]"
        else:
            badge = ":green[● Up]"
        st.markdown(f"**{name}** &nbsp; {badge}")
        st.caption(detail)


def metric(label: str, value: MetricValue, help: str | None = None, delta: str | None = None) -> None:
    st.metric(label, value if value is not None else "–", delta=delta, help=help, delta_color="off")


def sla_metric(label: str, rows: pd.DataFrame, note: str = "") -> None:
    """An SLA compliance card from one `qi_sla_compliance` row; says so when nothing is due yet.

    The help text names the denominator (due = met + breached), as every QI rate must.
    """
    if len(rows) and rows["n_due"].iloc[0]:
        row = rows.iloc[0]
        metric(label, f"{row['compliance']:.1%}",
               help=f"{row['n_met']} met of {row['n_due']} due; {row['n_pending']} pending{note}.")
    else:
        metric(label, None, help="No study is due yet.")
