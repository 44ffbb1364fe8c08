"""Destination holds written as the worker and operators write them, with plain SQL.

The worker's outage detection (worker/outages.py) is not used here on purpose: the
operator surfaces are tested against the rows themselves (migration 0005), so they
do not depend on a PACS really going down.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

PROBE_ERROR = "C-ECHO failed: DicomAssociation - connection refused"


def this_minute() -> datetime:
    """A hold time whose HH:MM the page shows, whole minutes so the expected text is exact."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def outage(conn: Connection, destination: str, started_at: datetime, *, error: str = PROBE_ERROR) -> None:
    """An automatic outage hold with its open outage row, as the worker puts it."""
    conn.execute(
        text("INSERT INTO destination_holds (destination, held_at, held_by, reason, kind, probe_failures, "
             "last_probe_at, next_probe_at, last_error) "
             "VALUES (:d, :at, 'worker', 'not answering C-ECHO', 'outage', 3, :probe, :next, :err)"),
        {"d": destination, "at": started_at, "probe": started_at + timedelta(seconds=30),
         "next": started_at + timedelta(seconds=90), "err": error},
    )
    conn.execute(
        text("INSERT INTO destination_outages (destination, started_at, probes, first_error, last_error) "
             "VALUES (:d, :at, 3, :err, :err)"),
        {"d": destination, "at": started_at, "err": error},
    )


def operator_hold(conn: Connection, destination: str, held_at: datetime, by: str, reason: str | None) -> None:
    """An operator's hold row (what core.operations.hold_destination writes, at a chosen time)."""
    conn.execute(
        text("INSERT INTO destination_holds (destination, held_at, held_by, reason, kind) "
             "VALUES (:d, :at, :by, :r, 'operator')"),
        {"d": destination, "at": held_at, "by": by, "r": reason},
    )
