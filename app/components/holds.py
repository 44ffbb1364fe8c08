"""Held destinations, said the same way on every page that shows them.

The text comes from core.queries.DestinationState.summary, which `./orthanc` and
`make status` print too, so an operator reads one wording wherever they look.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

import streamlit as st

from core.queries import DestinationState
from core.states import HoldKind

WHAT_HAPPENS = {
    HoldKind.OUTAGE: "it stopped answering C-ECHO; sending resumes by itself when it answers again",
    HoldKind.OPERATOR: "sending resumes when an operator releases it (Destinations page or `./orthanc release`)",
}


def hold_line(state: DestinationState, zone: ZoneInfo, now: datetime | None = None) -> str:
    """'PACS: outage since 14:05, 3 jobs waiting; it stopped answering ...' for a held destination."""
    assert state.kind is not None
    return f"{state.destination}: {state.summary(zone, now)}; {WHAT_HAPPENS[state.kind]} (times in {zone.key})."


def hold_banners(states: Iterable[DestinationState], zone: ZoneInfo, now: datetime | None = None) -> None:
    """One warning per held destination (nothing for the others): their jobs wait and spend no attempts."""
    for state in states:
        if state.held:
            st.warning(hold_line(state, zone, now), icon=":material/pause_circle:")
