"""KPI cards and health badges for the Overview.

A card always shows a measured value or says plainly that it could not measure one;
nothing here has a default that could be mistaken for "healthy".
"""

from __future__ import annotations

import streamlit as st


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


def metric(label: str, value: object, help: str | None = None, delta: str | None = None) -> None:
    st.metric(label, value if value is not None else "–", delta=delta, help=help, delta_color="off")
