"""Probe destinations on an outage hold with C-ECHO, and lift the hold when they answer.

The dispatcher puts a destination on an outage hold when a store to it failed and it
does not answer C-ECHO (worker/dispatcher.py). Its jobs then wait without spending
attempts. Every worker runs a prober; a probe is leased by moving the hold's
`next_probe_at` forward under SKIP LOCKED, so one destination is probed by one worker
at a time. Probes back off from PROBE_FIRST_S, doubling, to at most OUTAGE_PROBE_MAX
apart; the first echo that answers lifts the hold and wakes the dispatcher, so the
waiting jobs go out at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core import recorder
from core.orthanc_client import OrthancClient, OrthancUnavailable
from core.settings import Settings

log = logging.getLogger(__name__)
PROBE_FIRST_S = 2.0
PROBE_LOOP_S = 0.5
ECHO_TIMEOUT_S = 5


def first_probe_delay(settings: Settings) -> float:
    return min(PROBE_FIRST_S, settings.outage_probe_max)


def probe_delay(settings: Settings, failures: int) -> float:
    """Seconds until the next probe after `failures` failed ones: doubling, capped at OUTAGE_PROBE_MAX."""
    return min(settings.outage_probe_max, PROBE_FIRST_S * 2 ** max(0, failures))


class OutageProber:
    def __init__(self, settings: Settings, engine: Engine, orthanc: OrthancClient, on_lift: Callable[[], None]):
        self.settings = settings
        self.engine = engine
        self.orthanc = orthanc
        self.on_lift = on_lift

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                while self.probe_one() and not stop.is_set():
                    pass
            except (DBAPIError, OrthancUnavailable) as exc:  # the main loop reports these; try again soon
                log.debug("outage probe skipped", extra={"fields": {"error": type(exc).__name__}})
            stop.wait(PROBE_LOOP_S)

    def probe_one(self) -> bool:
        """Probe one due outage hold; False when none is due."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            recorder.close_outages_taken_over(conn, now)
            due = recorder.lease_outage_probe(conn, now=now, lease_until=now + timedelta(seconds=ECHO_TIMEOUT_S + 5))
        if due is None:
            return False
        destination, failures = due
        echo = self.orthanc.echo(destination, timeout=ECHO_TIMEOUT_S, raise_unreachable=True)
        at = datetime.now(UTC)
        with self.engine.begin() as conn:
            if echo.ok:
                lifted = recorder.outage_ended(conn, destination, at=at)
            else:
                recorder.outage_probe_failed(
                    conn, destination, at=at, error=echo.error or "no answer",
                    next_probe_at=at + timedelta(seconds=probe_delay(self.settings, failures + 1)))
        if echo.ok:
            log.info("destination answers C-ECHO again: outage hold lifted",
                     extra={"fields": {"destination": destination, "lifted": lifted}})
            self.on_lift()
        return True
