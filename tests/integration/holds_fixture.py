"""Destination holds written through the recorder, as the worker and operators write them.

The worker's outage detection (worker/outages.py) is not used here on purpose: the
operator surfaces are tested against the rows the recorder writes, so they do not
depend on a PACS really going down.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from core import recorder

PROBE_ERROR = "C-ECHO failed: DicomAssociation - connection refused"


def this_minute() -> datetime:
    """A hold time whose HH:MM the page shows, whole minutes so the expected text is exact."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def outage(conn: Connection, destination: str, started_at: datetime, *, error: str = PROBE_ERROR) -> None:
    """An automatic outage hold after three failed probes, the last 30 s in, the next due at 90 s."""
    recorder.outage_started(conn, destination, at=started_at, error=error,
                            next_probe_at=started_at + timedelta(seconds=10))
    for probe_at in (started_at + timedelta(seconds=10), started_at + timedelta(seconds=20),
                     started_at + timedelta(seconds=30)):
        recorder.outage_probe_failed(conn, destination, at=probe_at, error=error,
                                     next_probe_at=started_at + timedelta(seconds=90))


def operator_hold(conn: Connection, destination: str, held_at: datetime, by: str, reason: str | None) -> None:
    """An operator's hold (what core.operations.hold_destination records), at a chosen time."""
    recorder.hold_destination(conn, destination, actor=by, reason=reason, at=held_at)
