"""Two-step confirmation for actions that are hard to undo (bulk retry, delete, resend).

The first click only arms the action and says exactly what will happen; a second,
explicit "Confirm" performs it. Arming is per key, so two pending actions never mix.
"""

from __future__ import annotations

from typing import Any

import streamlit as st


def _key(key: str) -> str:
    return f"_confirm_{key}"


def arm(key: str, payload: Any = True) -> None:
    st.session_state[_key(key)] = payload


def disarm(key: str) -> None:
    st.session_state.pop(_key(key), None)


def armed(key: str) -> Any:
    return st.session_state.get(_key(key))


def confirm_step(key: str, prompt: str, confirm_label: str = "Confirm") -> Any:
    """When `key` is armed, show `prompt` with Confirm/Cancel; return the payload on Confirm."""
    payload = armed(key)
    if payload is None:
        return None
    st.warning(prompt)
    yes, no, _ = st.columns([1, 1, 6])
    if yes.button(confirm_label, key=f"{key}_yes", type="primary"):
        disarm(key)
        return payload
    if no.button("Cancel", key=f"{key}_no"):
        disarm(key)
        st.rerun()
    return None
