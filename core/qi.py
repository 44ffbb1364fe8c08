"""QI analytics queries: thin, parameterised calls of the SQL views and functions.

Every number shown by the QI pages, the CLI report and the Grafana dashboards is
defined once, in db/sql, one file per view or function (`db/sql/qi_study_live.sql`,
`db/sql/qi_stage_stats.sql`, ...; docs/qi.md says which is which): `qi_study` (one row per
study, docs/qi.md "Per study"), `qi_delivery` (one row per study and destination),
`qi_attempt` (one row per finished send attempt) and the aggregate functions
`qi_*(p_from, p_to, ...)` (counts, p50/p90/p95 with percentile_cont, max, rates with
their denominators). This module only chooses parameters and returns DataFrames, so
no metric is re-derived in Python.

Dates: a filter's `start` and `end` are calendar days in the configured TZ (both
included); they become the UTC instants [start 00:00, end + 1 day 00:00) in that
zone, which is the same bucketing the SQL uses (`first_received_at AT TIME ZONE tz`).

SQL text here is composed from this module's constants only; every value is a bound
parameter (which is what the `noqa: S608` markers assert).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import Connection, text

from core.settings import Settings

STAGES: tuple[str, ...] = (
    "wait_stable", "to_ai", "ai_round_trip", "result_settle", "to_destinations", "turnaround",
)
AI_STAGES: tuple[str, ...] = ("to_ai", "ai_round_trip", "result_settle")
GRAINS: tuple[str, ...] = ("day", "week", "month", "all")
GROUPS: tuple[str, ...] = ("none", "modality", "source_aet", "destination", "rule")
SLA_METRICS: tuple[str, ...] = ("turnaround", "ai_round_trip", "to_destinations")
READER_ROLE = "grafana_ro"
# What a read-only reader (Grafana) may select: views without patient names or ids.
# qi_stage_hist and qi_study_cube (migration 0012), qi_delivery_hist, qi_delivery_hist_month,
# qi_delivery_cube, qi_ai_day and qi_attempt_day (0014) and qi_stage_hist_month (0015) hold per-day
# or per-month counts and durations only; the aggregates grafana_ro may call read them.
READABLE_RELATIONS: tuple[str, ...] = ("qi_settings", "qi_study", "qi_delivery", "qi_attempt", "qi_stage_hist",
                                       "qi_study_cube", "qi_delivery_hist", "qi_delivery_hist_month",
                                       "qi_delivery_cube", "qi_ai_day", "qi_attempt_day", "qi_stage_hist_month")

# One line per metric, shown under each chart and in the docs.
DEFINITIONS: dict[str, str] = {
    "wait_stable": "Seconds from the first instance received to the study being stable (first stability).",
    "to_ai": "Seconds from study stable to the first successful send to the AI node.",
    "ai_round_trip": "Seconds from the AI send succeeding to the first AI-result instance received; "
                     "a result that came before that success answers an earlier attempt and is "
                     "measured from that attempt's start.",
    "result_settle": "Seconds from the first AI-result instance to that result series being stable.",
    "to_destinations": "Seconds from ready (AI result stable on AI routes, else study stable) "
                       "to delivered (the last required delivery succeeded and, on AI routes, the AI result is stable).",
    "turnaround": "Seconds from the first instance received to delivered (the last required delivery "
                  "succeeded and, on AI routes, the AI result is stable).",
}

_FUNCTIONS = frozenset({
    "qi_stage_stats", "qi_stage_histogram", "qi_sla_compliance", "qi_study_outcomes", "qi_delivery_outcomes",
    "qi_delivery_times", "qi_attempt_failures", "qi_top_errors", "qi_ai_outcomes", "qi_volume",
    "qi_volume_heatmap", "qi_daily_summary",
})
# Sort memory for the percentile aggregates of one transaction (SET LOCAL). A year of
# deliveries at 1M studies (1.3M rows) sorts in ~150 MB; with 64 MB it went to disk
# ("external sort", bench/qi_bench.py). Memory is used only as far as the rows need it.
WORK_MEM = "256MB"


class QiError(ValueError):
    """A QI query was asked for something that does not exist (grain, group, stage)."""


@dataclass(frozen=True)
class QiFilter:
    """The shared filters: local calendar days [start, end] and optional dimension values."""

    start: date
    end: date
    modalities: tuple[str, ...] = field(default_factory=tuple)
    sources: tuple[str, ...] = field(default_factory=tuple)
    destinations: tuple[str, ...] = field(default_factory=tuple)
    rules: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise QiError(f"the end date {self.end} is before the start date {self.start}")

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """[start 00:00, end + 1 day 00:00) in `zone`, as UTC instants.

        UTC, because Python subtracts two datetimes of the same zone on the wall clock
        (a DST day would look 24 h long); instants in UTC compare and subtract exactly.
        """
        return (
            datetime.combine(self.start, time(0), tzinfo=zone).astimezone(UTC),
            datetime.combine(self.end + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC),
        )

    def params(self, zone: ZoneInfo) -> dict[str, Any]:
        """Bind parameters of the SQL functions (an empty selection means "any")."""
        p_from, p_to = self.bounds(zone)
        return {
            "p_from": p_from, "p_to": p_to,
            "p_modality": list(self.modalities) or None,
            "p_source": list(self.sources) or None,
            "p_destination": list(self.destinations) or None,
            "p_rule": list(self.rules) or None,
        }


FILTER_ARGS = (
    "p_modality => CAST(:p_modality AS text[]), p_source => CAST(:p_source AS text[]), "
    "p_destination => CAST(:p_destination AS text[]), p_rule => CAST(:p_rule AS text[])"
)
RANGE_ARGS = "p_from => CAST(:p_from AS timestamptz), p_to => CAST(:p_to AS timestamptz)"


# --- settings, caches, privileges ---------------------------------------------------


def sync_qi_settings(conn: Connection, settings: Settings) -> bool:
    """Upsert `qi_settings` from `.env`; True when a value changed.

    The worker, app and CLI call this at start, so the views use the thresholds,
    AI timeout and time zone that the rest of the hub uses. Nothing is cached that
    depends on these values, so a change takes effect on the next query.
    """
    values = {
        "tz": settings.tz,
        "ai": settings.ai_result_timeout,
        "ta": settings.sla_turnaround_s,
        "rt": settings.sla_ai_round_trip_s,
        "td": settings.sla_to_destinations_s,
    }
    changed = conn.execute(
        text(
            "INSERT INTO qi_settings (id, tz, ai_result_timeout_s, sla_turnaround_s, sla_ai_round_trip_s, "
            "sla_to_destinations_s, updated_at) VALUES (true, :tz, :ai, :ta, :rt, :td, now()) "
            "ON CONFLICT (id) DO UPDATE SET tz = EXCLUDED.tz, ai_result_timeout_s = EXCLUDED.ai_result_timeout_s, "
            "sla_turnaround_s = EXCLUDED.sla_turnaround_s, sla_ai_round_trip_s = EXCLUDED.sla_ai_round_trip_s, "
            "sla_to_destinations_s = EXCLUDED.sla_to_destinations_s, updated_at = now() "
            "WHERE (qi_settings.tz, qi_settings.ai_result_timeout_s, qi_settings.sla_turnaround_s, "
            "qi_settings.sla_ai_round_trip_s, qi_settings.sla_to_destinations_s) IS DISTINCT FROM "
            "(EXCLUDED.tz, EXCLUDED.ai_result_timeout_s, EXCLUDED.sla_turnaround_s, "
            "EXCLUDED.sla_ai_round_trip_s, EXCLUDED.sla_to_destinations_s)"
        ),
        values,
    ).rowcount
    return changed == 1


def qi_settings(conn: Connection) -> dict[str, Any]:
    """The values the views use now (to label thresholds on charts)."""
    row = conn.execute(text("SELECT * FROM qi_settings")).mappings().one()
    return dict(row)


def grant_read_access(conn: Connection, role: str = READER_ROLE) -> bool:
    """GRANT SELECT on the public QI views to `role`, if it exists; True when granted.

    The migrations grant to grafana_ro when the role exists at migration time (0002, and
    core.schema_sql.load whenever it replaces a definition); this repeats it for a role
    created afterwards. The role reads views only, never the
    base tables (which hold patient names).
    """
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if not exists:
        return False
    quoted = conn.execute(text("SELECT quote_ident(:r)"), {"r": role}).scalar_one()
    conn.execute(text(f"GRANT SELECT ON {', '.join(READABLE_RELATIONS)} TO {quoted}"))
    return True


def refresh(conn: Connection, limit: int = 20_000) -> int:
    """Recompute up to `limit` studies changed since the last refresh; returns how many.

    Only speed depends on this: the public views read live rows for studies not yet
    refreshed. Call it periodically (worker) and before heavy reads (app, CLI).
    """
    return int(conn.execute(text("SELECT qi_refresh(:n)"), {"n": limit}).scalar_one())


def refresh_all(conn: Connection, batch: int = 20_000) -> int:
    """Refresh until no dirty study is left (each batch in its own transaction when autocommit)."""
    total = 0
    while True:
        done = refresh(conn, batch)
        total += done
        if done < batch:
            return total


def rebuild(conn: Connection) -> int:
    """Recompute the caches of every study (after a bulk load or a definition change)."""
    return int(conn.execute(text("SELECT qi_rebuild()")).scalar_one())


def dirty_count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM qi_dirty")).scalar_one())


# --- query plumbing ------------------------------------------------------------------


def prepare(conn: Connection, statement_timeout_ms: int | None = None) -> None:
    """Session settings for the analytic queries of the current transaction.

    Custom plans, so that "any modality" (NULL) folds away and the date range reaches
    the index; more sort memory for percentiles; no JIT (PostgreSQL 15 JIT-compiles
    these queries for 0.3-0.7 s and wins nothing back, bench/RESULTS.md); and, when
    given, a time limit (else the caller's, e.g. the app's read-only transaction).
    """
    conn.execute(text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
                      "set_config('work_mem', :mem, true), set_config('jit', 'off', true)"), {"mem": WORK_MEM})
    if statement_timeout_ms is not None:
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(statement_timeout_ms))})


def _frame(conn: Connection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    prepare(conn)
    result = conn.execute(text(sql), params)
    columns = list(result.keys())
    return pd.DataFrame.from_records(result.fetchall(), columns=columns)


def _call(conn: Connection, function: str, args: str, params: dict[str, Any]) -> pd.DataFrame:
    """`SELECT * FROM function(args)`: names and argument lists are this module's constants,
    every value is a bound parameter."""
    if function not in _FUNCTIONS:
        raise QiError(f"{function} is not a QI function")
    return _frame(conn, f"SELECT * FROM {function}({args})", params)  # noqa: S608 - constant SQL, bound values


def _check(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise QiError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
    return value


# --- aggregates ------------------------------------------------------------------------


def stage_stats(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", group: str = "none",
    stages: Sequence[str] | None = None,
) -> pd.DataFrame:
    """count, p50, p90, p95, max per bucket, group and stage (bucket, bucket_start, grp, stage, ...)."""
    for stage in stages or ():
        _check(stage, STAGES, "stage")
    return _call(
        conn, "qi_stage_stats",
        f"{RANGE_ARGS}, p_grain => :grain, p_group => :grp, {FILTER_ARGS}, "
        "p_stages => CAST(:stages AS text[])",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "grp": _check(group, GROUPS, "group"),
         "stages": list(stages) if stages else None},
    )


def stage_histogram(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, stage: str, bin_s: float, max_s: float,
) -> pd.DataFrame:
    """Counts per bin of `bin_s` seconds; values >= max_s share the last bin (bin_end = inf)."""
    if bin_s <= 0 or max_s <= 0:
        raise QiError("bin width and upper limit must be positive")
    return _call(
        conn, "qi_stage_histogram",
        f"p_stage => :stage, p_bin_s => :bin, p_max_s => :max, "
        f"{RANGE_ARGS}, {FILTER_ARGS}",
        {**flt.params(zone), "stage": _check(stage, STAGES, "stage"), "bin": float(bin_s), "max": float(max_s)},
    )


def sla_compliance(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", group: str = "none",
) -> pd.DataFrame:
    """Per metric: n_met, n_breached, n_pending, n_due = met + breached, compliance = met / due."""
    return _call(
        conn, "qi_sla_compliance",
        f"{RANGE_ARGS}, p_grain => :grain, p_group => :grp, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "grp": _check(group, GROUPS, "group")},
    )


def study_outcomes(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", group: str = "none",
) -> pd.DataFrame:
    """Received, routed (the rates' denominator), delivered, failed, in progress, unrouted."""
    return _call(
        conn, "qi_study_outcomes",
        f"{RANGE_ARGS}, p_grain => :grain, p_group => :grp, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "grp": _check(group, GROUPS, "group")},
    )


def delivery_outcomes(conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "all") -> pd.DataFrame:
    """Per destination and purpose: sends (denominator), succeeded, failed, in progress, failure_rate."""
    return _call(
        conn, "qi_delivery_outcomes",
        f"{RANGE_ARGS}, p_grain => :grain, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain")},
    )


def delivery_times(conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "all") -> pd.DataFrame:
    """Per destination and purpose: p50/p90/p95/max of the time to it, from ready and from reception."""
    return _call(
        conn, "qi_delivery_times",
        f"{RANGE_ARGS}, p_grain => :grain, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain")},
    )


def attempt_failures(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", by_destination: bool = True,
) -> pd.DataFrame:
    """Finished send attempts (denominator) and failed ones, by the attempt's own time."""
    return _call(
        conn, "qi_attempt_failures",
        f"{RANGE_ARGS}, p_grain => :grain, p_by_destination => :bydest, "
        f"{FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "bydest": by_destination},
    )


def top_errors(conn: Connection, flt: QiFilter, zone: ZoneInfo, *, limit: int = 10) -> pd.DataFrame:
    """The most frequent first lines of failed attempts' errors; share = of all failed attempts."""
    return _call(
        conn, "qi_top_errors",
        f"{RANGE_ARGS}, p_limit => :lim, {FILTER_ARGS}",
        {**flt.params(zone), "lim": int(limit)},
    )


def ai_outcomes(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", group: str = "none",
) -> pd.DataFrame:
    """Sent to the AI (denominator), on time, late, overdue without result, waiting; rates."""
    return _call(
        conn, "qi_ai_outcomes",
        f"{RANGE_ARGS}, p_grain => :grain, p_group => :grp, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "grp": _check(group, GROUPS, "group")},
    )


def ai_overdue_studies(conn: Connection, flt: QiFilter, zone: ZoneInfo, *, limit: int = 200) -> pd.DataFrame:
    """Studies whose AI result is late or missing past AI_RESULT_TIMEOUT, newest send first.

    waited_s is the round trip once the result is there (ai_result_at - ai_sent_at would
    be negative for a result that answered an earlier attempt), else the time since the send.
    """
    return _frame(
        conn,
        "SELECT study_instance_uid, accession_number, modality, source_aet, ai_sent_at, ai_result_at, "  # noqa: S608
        "ai_result_state, ai_round_trip_s, CASE WHEN ai_result_at IS NOT NULL THEN ai_round_trip_s "
        "ELSE qi_seconds(now(), ai_sent_at) END AS waited_s, "
        f"status FROM qi_filtered_studies({RANGE_ARGS}, {FILTER_ARGS}) "
        "WHERE ai_overdue ORDER BY ai_sent_at DESC, study_id DESC LIMIT :lim",
        {**flt.params(zone), "lim": int(limit)},
    )


def volume(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, grain: str = "day", group: str = "none",
) -> pd.DataFrame:
    """Studies received per bucket and group."""
    return _call(
        conn, "qi_volume",
        f"{RANGE_ARGS}, p_grain => :grain, p_group => :grp, {FILTER_ARGS}",
        {**flt.params(zone), "grain": _check(grain, GRAINS, "grain"), "grp": _check(group, GROUPS, "group")},
    )


def volume_heatmap(conn: Connection, flt: QiFilter, zone: ZoneInfo) -> pd.DataFrame:
    """Studies received per ISO weekday (1 = Monday) and local hour."""
    return _call(conn, "qi_volume_heatmap", f"{RANGE_ARGS}, {FILTER_ARGS}", flt.params(zone))


def daily_summary(conn: Connection, flt: QiFilter, zone: ZoneInfo) -> pd.DataFrame:
    """One row per local day: volumes, outcomes, stage percentiles, SLA compliance."""
    return _call(conn, "qi_daily_summary", f"{RANGE_ARGS}, {FILTER_ARGS}", flt.params(zone))


def filter_options(conn: Connection, flt: QiFilter, zone: ZoneInfo) -> dict[str, list[str]]:
    """Values present in the date range, for the filter widgets (the other filters ignored).

    One scan of the range: the distinct combinations of the studies' dimensions (a few
    hundred, against 500,000 studies a year) are materialised once and each list is
    read from those.
    """
    prepare(conn)
    row = conn.execute(
        text(
            "WITH s AS MATERIALIZED (SELECT DISTINCT modality, source_aet, destinations, rules "  # noqa: S608
            f"FROM qi_filtered_studies({RANGE_ARGS})) "
            "SELECT (SELECT array_agg(DISTINCT modality) FROM s WHERE modality IS NOT NULL) AS modality, "
            "(SELECT array_agg(DISTINCT source_aet) FROM s WHERE source_aet IS NOT NULL) AS source_aet, "
            "(SELECT array_agg(DISTINCT d) FROM s, unnest(s.destinations) AS d) AS destination, "
            "(SELECT array_agg(DISTINCT r) FROM s, unnest(s.rules) AS r) AS rule"
        ),
        QiFilter(flt.start, flt.end).params(zone),
    ).mappings().one()
    return {key: sorted(row[key] or []) for key in ("modality", "source_aet", "destination", "rule")}


# --- per-study rows ----------------------------------------------------------------------

STUDY_COLUMNS: tuple[str, ...] = (
    "study_instance_uid", "accession_number", "modality", "source_aet",
    "first_received_at", "stable_at", "ai_sent_at", "ai_result_at", "delivered_at",
    "wait_stable_s", "to_ai_s", "ai_round_trip_s", "to_destinations_s", "turnaround_s",
    "status", "destinations_ok", "destinations_failed",
    # beyond the contract (docs/qi.md, "Exports": at least the columns above, in that order):
    "ai_result_stable_at", "ready_at", "result_settle_s", "outcome", "ai_result_state",
    "sla_turnaround", "sla_ai_round_trip", "sla_to_destinations", "destinations_pending", "rules",
)


def iter_studies(
    conn: Connection, flt: QiFilter, zone: ZoneInfo, *, batch: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Per-study rows (STUDY_COLUMNS) in first-received order, streamed.

    A server-side cursor fetches `batch` rows at a time, so an export of any size
    keeps memory flat. No patient name or id is selected.
    """
    prepare(conn, statement_timeout_ms=0)
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(
        text(
            f"SELECT {', '.join(STUDY_COLUMNS)} FROM qi_filtered_studies({RANGE_ARGS}, {FILTER_ARGS}) "  # noqa: S608
            "ORDER BY first_received_at, study_id"
        ),
        flt.params(zone),
    )
    try:
        for row in result.mappings():
            yield dict(row)
    finally:
        result.close()


# --- drill-down: the studies behind one number (db/sql/qi_drill_studies.sql) ----------------

DRILL_MEASURES: tuple[str, ...] = (
    "received", "routed", "outcome", "stage", "sla_turnaround", "sla_ai_round_trip", "sla_to_destinations",
    "ai", "heat", "delivery", "delivered_to", "attempt_failed", "error",
)
# URL query keys of the filter lists (a key may repeat: ?mod=CR&mod=CT)
_DRILL_LISTS = (("mod", "modalities"), ("src", "sources"), ("dest", "destinations"), ("rule", "rules"))
_DRILL_NUMBERS = ("lo", "hi", "bin_s", "max_s")
DRILL_SQL = (
    "SELECT study_id FROM qi_drill_studies(p_measure => :d_measure, p_value => :d_value, "
    "p_from => CAST(:d_from AS timestamptz), p_to => CAST(:d_to AS timestamptz), p_grain => :d_grain, "
    "p_bucket => CAST(:d_bucket AS date), p_group => :d_group, p_grp => :d_grp, "
    "p_lo => CAST(:d_lo AS double precision), p_hi => CAST(:d_hi AS double precision), "
    "p_bin_s => CAST(:d_bin_s AS double precision), p_max_s => CAST(:d_max_s AS double precision), "
    "p_purpose => :d_purpose, p_modality => CAST(:d_modality AS text[]), p_source => CAST(:d_source AS text[]), "
    "p_destination => CAST(:d_destination AS text[]), p_rule => CAST(:d_rule AS text[]))"
)


@dataclass(frozen=True)
class Drill:
    """The studies behind one number of a QI page: the filters and window of the page, the
    measure and value that number counts, and the bucket, group or bin it is in.

    It travels as URL query parameters (`query`, `from_query`), so the Studies list it
    opens can be shared; the rows come from qi_drill_studies, never from Python.
    """

    flt: QiFilter
    measure: str
    value: str | None = None
    grain: str = "all"
    bucket: date | None = None
    group: str = "none"
    grp: str | None = None
    lo: float | None = None
    hi: float | None = None
    bin_s: float | None = None
    max_s: float | None = None
    purpose: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bucket, datetime):  # a bucket read back from a frame (pandas Timestamp)
            object.__setattr__(self, "bucket", self.bucket.date())
        _check(self.measure, DRILL_MEASURES, "measure")
        _check(self.grain, GRAINS, "grain")
        _check(self.group, GROUPS, "group")

    def params(self, zone: ZoneInfo) -> dict[str, Any]:
        """Bind parameters of DRILL_SQL (prefixed d_, to sit beside a caller's own)."""
        flt = self.flt.params(zone)
        return {
            "d_measure": self.measure, "d_value": self.value, "d_from": flt["p_from"], "d_to": flt["p_to"],
            "d_grain": self.grain, "d_bucket": self.bucket, "d_group": self.group, "d_grp": self.grp,
            "d_lo": self.lo, "d_hi": self.hi, "d_bin_s": self.bin_s, "d_max_s": self.max_s,
            "d_purpose": self.purpose, "d_modality": flt["p_modality"], "d_source": flt["p_source"],
            "d_destination": flt["p_destination"], "d_rule": flt["p_rule"],
        }

    def query(self) -> dict[str, str | list[str]]:
        """URL query parameters: only what is set, lists as repeated keys."""
        out: dict[str, str | list[str]] = {"qi": self.measure, "from": self.flt.start.isoformat(),
                                           "to": self.flt.end.isoformat()}
        if self.value is not None:
            out["v"] = self.value
        if self.bucket is not None:
            out.update(grain=self.grain, bucket=self.bucket.isoformat())
        if self.grp is not None:
            out.update(group=self.group, grp=self.grp)
        for name in _DRILL_NUMBERS:
            number = getattr(self, name)
            if number is not None:
                out[name] = repr(float(number))
        if self.purpose is not None:
            out["purpose"] = self.purpose
        for key, field_name in _DRILL_LISTS:
            values = list(getattr(self.flt, field_name))
            if values:
                out[key] = values
        return out

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> Drill | None:
        """The drill a Studies URL asks for (None without `qi`); QiError when a value is invalid."""

        def one(key: str) -> str | None:
            values = query.get(key) or []
            return values[-1] if values else None

        measure = one("qi")
        if measure is None:
            return None
        try:
            start, end = date.fromisoformat(one("from") or ""), date.fromisoformat(one("to") or "")
            bucket = one("bucket")
            numbers = {name: float(v) for name in _DRILL_NUMBERS if (v := one(name)) is not None}
            lists = {field_name: tuple(query.get(key) or ()) for key, field_name in _DRILL_LISTS}
            return cls(
                QiFilter(start, end, **lists), measure, value=one("v"), grain=one("grain") or "all",
                bucket=date.fromisoformat(bucket) if bucket else None, group=one("group") or "none",
                grp=one("grp"), purpose=one("purpose"), **numbers,
            )
        except ValueError as exc:  # QiError is a ValueError too
            raise QiError(f"invalid drill-down link: {exc}") from exc

    def describe(self) -> str:
        """One line for the Studies page: what is counted, where, and with which filters."""
        parts = [self.measure.replace("_", " ") + (f" = {self.value}" if self.value is not None else "")]
        if self.bucket is not None:
            parts.append(f"{self.grain} of {self.bucket.isoformat()}")
        if self.grp is not None:
            parts.append(f"{self.group.replace('_', ' ')} {self.grp}")
        if self.purpose is not None:
            parts.append(f"purpose {self.purpose}")
        if self.measure == "heat" and self.lo is not None and self.hi is not None:
            parts.append(f"ISO weekday {int(self.lo)}, hour {int(self.hi):02d}")
        elif self.bin_s is not None and self.lo is not None:
            upper = "" if self.max_s is not None and self.lo >= self.max_s else f" to {self.lo + self.bin_s:g}"
            parts.append(f"bin {self.lo:g}{upper or ' and more'} s")
        parts.append(f"received {self.flt.start.isoformat()} to {self.flt.end.isoformat()}"
                     if self.measure not in ("attempt_failed", "error")
                     else f"attempts ended {self.flt.start.isoformat()} to {self.flt.end.isoformat()}")
        for label, values in (("modality", self.flt.modalities), ("source", self.flt.sources),
                              ("destination", self.flt.destinations), ("rule", self.flt.rules)):
            if values:
                parts.append(f"{label} in {', '.join(values)}")
        return " · ".join(parts)


def drill_count(conn: Connection, drill: Drill, zone: ZoneInfo) -> int:
    """How many studies the drill selects (what the QI number counts)."""
    prepare(conn)
    return int(conn.execute(text(f"SELECT count(*) FROM ({DRILL_SQL}) d"), drill.params(zone)).scalar_one())  # noqa: S608
