"""The one line every surface prints for a held destination (core.queries.DestinationState.summary)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from app.components.holds import hold_line
from core.queries import DestinationState, HoldKind

LA = ZoneInfo("America/Los_Angeles")
NOW = datetime(2026, 12, 6, 18, 30, tzinfo=UTC)  # 10:30 PST


def state(kind: HoldKind | None, held_at: datetime | None, waiting: int, *, by: str | None = None,
          reason: str | None = None) -> DestinationState:
    return DestinationState("PACS", kind, held_at, by, reason, waiting, None, None, None)


def test_outage_since_local_time_and_jobs_waiting() -> None:
    held = state(HoldKind.OUTAGE, datetime(2026, 12, 6, 17, 5, 40, tzinfo=UTC), 3, by="worker")
    assert held.summary(LA, NOW) == "outage since 09:05, 3 jobs waiting"
    assert state(HoldKind.OUTAGE, datetime(2026, 12, 6, 17, 5, tzinfo=UTC), 1).summary(LA, NOW) == \
        "outage since 09:05, 1 job waiting"


def test_operator_hold_names_who_and_why() -> None:
    at = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
    assert state(HoldKind.OPERATOR, at, 0, by="ana", reason="PACS upgrade").summary(LA, NOW) == \
        "on hold by ana since 08:00 (PACS upgrade), 0 jobs waiting"
    assert state(HoldKind.OPERATOR, at, 2, by="ana").summary(LA, NOW) == "on hold by ana since 08:00, 2 jobs waiting"


def test_a_hold_from_an_earlier_local_day_shows_its_date() -> None:
    # 07:00 UTC on the 6th is 23:00 PST on the 5th: "since 23:00" alone would read as tonight.
    held = state(HoldKind.OUTAGE, datetime(2026, 12, 6, 7, 0, tzinfo=UTC), 4)
    assert held.summary(LA, NOW) == "outage since 2026-12-05 23:00, 4 jobs waiting"


def test_not_held_has_no_text() -> None:
    free = state(None, None, 5)
    assert not free.held and free.summary(LA, NOW) is None


def test_app_banner_says_what_happens_next() -> None:
    outage = state(HoldKind.OUTAGE, datetime(2026, 12, 6, 17, 5, tzinfo=UTC), 3)
    assert hold_line(outage, LA, NOW) == (
        "PACS: outage since 09:05, 3 jobs waiting; it stopped answering C-ECHO; "
        "sending resumes by itself when it answers again (times in America/Los_Angeles).")
    operator = state(HoldKind.OPERATOR, datetime(2026, 12, 6, 17, 5, tzinfo=UTC), 0, by="ana")
    assert hold_line(operator, LA, NOW).endswith("sending resumes when an operator releases it "
                                                 "(Destinations page or `./orthanc release`) "
                                                 "(times in America/Los_Angeles).")
