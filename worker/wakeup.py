"""Wake the dispatcher the moment another process makes jobs due.

An operator's retry, resend or release is written by the app, the API or the CLI, and
core.recorder.announce_work NOTIFYs WORK_CHANNEL when it commits. Without this, an idle
dispatcher would notice at its next claim, up to POLL_INTERVAL later, and every worker
sharing the database hears it, not only the one whose tailer queued the job.

Missing an announcement costs only that delay: the idle claim still runs every
POLL_INTERVAL. So the listener reconnects with a backoff when PostgreSQL goes away, and
wakes the dispatcher once after every (re)connection for what it may have missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from core.recorder import WORK_CHANNEL

log = logging.getLogger(__name__)
WAIT_S = 1.0  # how long one wait for notifications lasts before the stop flag is looked at again


class WorkListener:
    """LISTENs on WORK_CHANNEL on a connection of its own and calls `wake` for each announcement."""

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        # Its own connection, outside the pool: a LISTENing session stays open for the worker's life.
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wake = wake

    def run_forever(self, stop: threading.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                self._listen(stop)
                return
            except psycopg.Error:  # PostgreSQL away: the dispatcher's idle claim still runs meanwhile
                log.warning("not listening for announced work; retrying", exc_info=True)
                stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def _listen(self, stop: threading.Event) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(WORK_CHANNEL)))
            self.wake()  # whatever was announced while not listening
            while not stop.is_set():
                for _ in conn.notifies(timeout=WAIT_S):
                    self.wake()
