"""Polling helpers: tests wait for real asynchronous effects, never sleep blindly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The awaited condition did not become true in time."""


def wait_until(
    probe: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call `probe` until it returns a truthy value, and return that value."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = probe()
    return last
