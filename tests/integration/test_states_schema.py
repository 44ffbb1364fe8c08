"""core/states.py's enums are exactly the CHECK constraints of the live, migrated schema.

Python binds these values into SQL and compares them with what it reads back; a value
added to a migration but not to its enum (or the other way round) fails here instead
of at the first INSERT a CHECK refuses, or as a state no page or query knows about.
"""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from sqlalchemy import Engine, text

from core.states import (
    AlertChannel,
    AlertMessage,
    AuditSource,
    EventType,
    HoldKind,
    IncidentKind,
    JobState,
    LinkedBy,
    Payload,
    Purpose,
    Role,
    SeriesKind,
    StudyStatus,
)

pytestmark = pytest.mark.integration

# (table, column) -> the enum that mirrors its CHECK constraint.
MIRRORS: dict[tuple[str, str], type[StrEnum]] = {
    ("studies", "status"): StudyStatus,
    ("series", "kind"): SeriesKind,
    ("series", "linked_by"): LinkedBy,
    ("events", "type"): EventType,
    ("routing_jobs", "state"): JobState,
    ("routing_jobs", "purpose"): Purpose,
    ("routing_jobs", "payload"): Payload,
    ("destination_holds", "kind"): HoldKind,
    ("audit_log", "source"): AuditSource,
    ("app_users", "role"): Role,
    ("api_tokens", "role"): Role,
    ("incidents", "kind"): IncidentKind,
    ("alert_deliveries", "channel"): AlertChannel,
    ("alert_deliveries", "message"): AlertMessage,
}

# pg_get_constraintdef renders `col IN ('a', 'b')` as `CHECK ((col = ANY (ARRAY['a'::text, 'b'::text])))`.
_VALUE = re.compile(r"'((?:[^']|'')*)'::text")


def _checks(conn, table: str, column: str) -> list[str]:
    """The definitions of the CHECK constraints on exactly this one column."""
    return list(conn.execute(
        text(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = :column "
            "WHERE c.contype = 'c' AND c.conrelid = to_regclass(:table) AND c.conkey = ARRAY[a.attnum] "
            "ORDER BY c.conname"
        ),
        {"table": f"public.{table}", "column": column},
    ).scalars())


def _allowed(conn, table: str, column: str) -> set[str]:
    checks = _checks(conn, table, column)
    assert len(checks) == 1, f"{table}.{column}: expected one CHECK constraint, found {checks}"
    definition = checks[0]
    assert re.fullmatch(rf"CHECK \(\({column} = ANY \(ARRAY\[.*\]\)\)\)", definition), \
        f"{table}.{column}: not a list of allowed values: {definition}"
    return {value.replace("''", "'") for value in _VALUE.findall(definition)}


@pytest.mark.parametrize(("table", "column"), list(MIRRORS), ids=[f"{t}.{c}" for t, c in MIRRORS])
def test_enum_equals_check_constraint(db: Engine, table: str, column: str) -> None:
    enum = MIRRORS[(table, column)]
    with db.connect() as conn:
        allowed = _allowed(conn, table, column)
    values = {member.value for member in enum}
    assert values == allowed, (
        f"{enum.__name__} and the CHECK on {table}.{column} differ: "
        f"only in the enum {sorted(values - allowed)}, only in the schema {sorted(allowed - values)}"
    )


def test_every_enum_of_core_states_is_checked() -> None:
    """A new vocabulary in core/states.py gets its row in MIRRORS (and so a schema check)."""
    import core.states

    defined = {obj for obj in vars(core.states).values()
               if isinstance(obj, type) and issubclass(obj, StrEnum) and obj is not StrEnum}
    assert defined == set(MIRRORS.values())
