"""Keyset pagination controls: Newer / Older buttons over a stack of cursors.

Pages never count all rows (that would be a full scan at a million studies); they
ask for one row more than they show to know whether an older page exists. The stack
of cursors lives in the session, and resets whenever the filters change.
"""

from __future__ import annotations

from typing import Any

import streamlit as st


def _state(key: str) -> dict[str, Any]:
    return st.session_state.setdefault(f"_pager_{key}", {"token": None, "stack": [None]})


def current_cursor(key: str, token: Any) -> Any:
    """The cursor of the page to show; `token` (the filters) changing goes back to page 1."""
    state = _state(key)
    if state["token"] != token:
        state["token"] = token
        state["stack"] = [None]
    return state["stack"][-1]


def page_number(key: str) -> int:
    return len(_state(key)["stack"])


def _older(key: str, cursor: Any) -> None:
    _state(key)["stack"].append(cursor)


def _newer(key: str) -> None:
    stack = _state(key)["stack"]
    if len(stack) > 1:
        stack.pop()


def _first(key: str) -> None:
    _state(key)["stack"] = [None]


def controls(key: str, next_cursor: Any, shown: int) -> None:
    state = _state(key)
    first, newer, older, info = st.columns([1, 1, 1, 5])
    first.button("« Newest", key=f"{key}_first", disabled=len(state["stack"]) == 1, on_click=_first, args=(key,))
    newer.button("← Newer", key=f"{key}_newer", disabled=len(state["stack"]) == 1, on_click=_newer, args=(key,))
    older.button("Older →", key=f"{key}_older", disabled=next_cursor is None, on_click=_older,
                 args=(key, next_cursor))
    more = "older rows exist" if next_cursor is not None else "end of the list"
    info.caption(f"Page {len(state['stack'])} · {shown} row(s) shown · {more}")
