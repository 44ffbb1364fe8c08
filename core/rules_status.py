"""One sentence for a refused routing.yml, the same in /health, `make status`, `./orthanc status` and the app.

The worker keeps the last good rules when a saved file is invalid (worker/rules_watch.py).
That is right, but it is a degraded state an operator must see everywhere they look,
with where the file is broken and how old the rules in force are:
"routing.yml refused at line 12, running on rules of 14:05".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

STATUS_NAME = "routing_rules"  # config_status row written by the worker
# core.rules.parse_rules names the place first: "routing.yml:12: ...".
_LINE = re.compile(r"\A[^\n:]*:(\d+):")


def error_line(error: str) -> int | None:
    """The 1-based line a rules error names first, or None (an unreadable file has none)."""
    match = _LINE.match(error)
    return int(match.group(1)) if match else None


def rules_problem(
    error: str | None, loaded_at: datetime | None, zone: ZoneInfo, *, file_name: str = "routing.yml",
    now: datetime | None = None,
) -> str | None:
    """The degraded-state sentence, or None when the rules file is not refused.

    `loaded_at` is when the rules still in force were loaded (None: none are, and
    nothing is routed). Its date is added when it is not today in the site's zone.
    """
    if not error:
        return None
    line = error_line(error)
    if line is not None:
        what = f"{file_name} refused at line {line}"
    else:
        first = error.splitlines()[0].removeprefix(f"{file_name}:").strip()
        what = f"{file_name} refused ({first[:80]})"
    if loaded_at is None:
        return f"{what}, running on no rules: nothing is routed"
    local = loaded_at.astimezone(zone)
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    stamp = local.strftime("%H:%M") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")
    return f"{what}, running on rules of {stamp}"
