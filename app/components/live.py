"""Pages that refresh themselves: a fragment that runs again every APP_REFRESH_S seconds.

`live_section` draws an "Auto-refresh" toggle and runs the page's measured part in a
`st.fragment(run_every=...)`: every few seconds Streamlit runs that part again, alone,
and redraws it. Filters and selections are widgets with keys (kept in the session), so
a refresh never loses them; the operator pauses the refresh with the toggle (turning it
off runs the page once more without `run_every`, which stops the timer in the browser).

Each run of the fragment checks the session again (access.session_alive); a run the
timer started does not count as the user's activity, one that follows their change of a
filter or a click in it does. So an unattended page does not keep its session alive, an
operator working in the Queue's filters is not logged out as idle, and an ended session
sends the whole app back to the login page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import streamlit as st

from app.components.access import session_alive
from app.components.fmt import local
from app.context import get_settings


def live_toggle(key: str) -> float | None:
    """The toggle; the refresh interval in seconds while it is on, else None."""
    every = get_settings().app_refresh_s
    on = st.toggle(f"Auto-refresh every {every} s", value=True, key=f"{key}_live",
                   help="Turn off to pause the page: it keeps what it shows until you turn it on again "
                        "or change something.")
    return float(every) if on else None


def live_section(key: str, body: Callable[[], None], *, live: bool = True) -> None:
    """Run `body` now, and again every APP_REFRESH_S seconds while the toggle is on.

    With `live=False` (say, a finished study) there is no toggle and `body` runs once.
    """
    if not live:
        body()
        return
    every = live_toggle(key)
    seen = f"_{key}_inputs"

    def refresh() -> None:
        # A run of the fragment is the user's activity when they changed something in it (a
        # filter, a selection, a button), not when the timer ran it.
        acted = st.session_state.get(seen) != _inputs()  # (as the previous run left them)
        session_alive(touch=acted)
        measured_caption(datetime.now(UTC), paused=every is None)
        body()
        st.session_state[seen] = _inputs()

    st.fragment(refresh, run_every=every, key=f"{key}_fragment")()


def _inputs() -> str:
    """A fingerprint of what the user set in this session (widget values and the pages' own
    keys; internal keys start with "_"), to tell their clicks from the timer's runs."""
    state = {str(k): v for k, v in st.session_state.items() if not str(k).startswith("_")}
    return hashlib.sha256(repr(sorted(state.items(), key=lambda kv: kv[0])).encode()).hexdigest()


def measured_caption(at: datetime, *, paused: bool, extra: str = "") -> None:
    """"Measured at 14:05:09 (America/Los_Angeles)", and whether the page refreshes itself."""
    settings = get_settings()
    state = "auto-refresh paused" if paused else f"refreshes every {settings.app_refresh_s} s"
    st.caption(f"Measured at {local(at, settings.zone)} ({settings.tz}); {state}.{extra}")
