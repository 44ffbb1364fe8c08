"""The per-day histograms and counts (migration 0012) give exactly percentile_cont's and count's numbers.

Without filters or groups, qi_stage_stats and qi_stage_histogram answer from qi_stage_hist
(counts per local day, stage and log-spaced bucket, plus the bucket's values) instead of
reading every study. Property: on random cached rows (ties, empty days, single values,
zeros, fractions, huge values and Infinity, NULL stages, days across the spring DST
change, some studies dirty), over random windows (whole local days as core.qi passes
them, and arbitrary instants), both functions return, bit for bit, what percentile_cont,
count and max (and the bin expression) give over the public view qi_study. The
histograms are then changed the ways the cache changes (rows deleted, updated, inserted,
the cache truncated, TZ changed) and must still equal a full recomputation. The study
counts per day (qi_study_cube) behind qi_study_outcomes, qi_volume and qi_volume_heatmap
are checked the same way against count(*) over qi_study, and qi_sla_compliance against
the states of qi_study.

Migration 0014 does the same for the deliveries and attempts: qi_delivery_times
(percentile_cont per destination and purpose, from qi_delivery_hist), qi_delivery_outcomes
(qi_delivery_cube), qi_ai_outcomes (qi_ai_day, the round-trip histogram and the sent
studies still without a result) and qi_attempt_failures (qi_attempt_day, kept by triggers
on events) are checked against the same aggregates over qi_delivery, qi_study and
qi_attempt. They answer from the per-day tables over windows of 60 days or more only
(qi_hist_long), so the windows include long ones around the 8 days of data.

Migration 0015 sums the stage histograms per calendar month (qi_stage_hist_month): with
buckets of months or the whole window, the counts of the months wholly inside a window come
from there and only the days before and after them from qi_stage_hist. So the 8 days lie on
both sides of two month boundaries, and qi_stage_stats (also for some stages only),
qi_sla_compliance, qi_stage_histogram and qi_ai_outcomes are checked over windows holding
whole months with partial months (and partial days) at either end, and over whole months.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text

from core import qi
from core.qi import QiFilter

pytestmark = pytest.mark.integration

LA = ZoneInfo("America/Los_Angeles")
# The local days the studies fall on (a row's day is an index): both sides of the month
# boundaries Jan/Feb and Feb/Mar (0015's month rollup) and the spring DST change (2026-03-08).
DAY_DATES = (date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 14), date(2026, 2, 28), date(2026, 3, 1),
             date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9))
FIRST_DAY = DAY_DATES[0]
DAYS = len(DAY_DATES)
SPAN = (DAY_DATES[-1] - FIRST_DAY).days + 1
EVENTS_FIRST_DAY = date(2026, 3, 5)  # the attempts' 8 days, across the DST change
STAGES = ("wait_stable", "to_ai", "ai_round_trip", "result_settle", "to_destinations", "turnaround")

# Durations drawn so that ties, bucket edges and extremes are frequent. Not below 1e-318
# (subnormals above it stay): binning divides by the bin width, and PostgreSQL raises
# "underflow" for a quotient that rounds to 0 (e.g. 5e-324 / 150), in the reference and in
# qi_stage_histogram / qi_drill_studies alike; durations are whole seconds in practice.
VALUE = st.one_of(
    st.none(),
    st.sampled_from([0.0, 1.0, 5.0, 63.0, 64.0, 65.0, 600.0, 3600.0, 1e12, math.inf]),
    st.integers(min_value=0, max_value=20_000).map(float),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False).map(lambda v: 0.0 if v < 1e-318 else v),
)
DIMS = st.tuples(st.sampled_from([None, "CT", "MR"]), st.sampled_from([None, "MOD_A", "MOD_B"]), st.booleans(),
                 st.sampled_from(["unrouted", "delivered", "failed", "in_progress", "no_delivery"]))
ROW = st.tuples(st.integers(0, DAYS - 1), st.integers(0, 86_399), st.tuples(*[VALUE] * len(STAGES)), st.booleans(),
                DIMS)
ROWS = st.lists(ROW, min_size=0, max_size=120)
WINDOW = st.tuples(st.integers(0, DAYS - 1), st.integers(0, DAYS - 1))
INSTANTS = st.tuples(st.integers(-86_400, (SPAN + 1) * 86_400), st.integers(1, SPAN * 86_400))
# (study index, destination, purpose, outcome, to_destination_s, turnaround_s): values only
# on completed sends, as qi_delivery_live makes them (completed exactly when 'succeeded')
DELIVERY = st.tuples(st.integers(0, 10_000), st.sampled_from(["PACS", "ARCHIVE", "AI"]),
                     st.sampled_from(["delivery", "ai"]),
                     st.sampled_from(["succeeded", "succeeded", "failed", "in_progress", "cancelled"]), VALUE, VALUE)
DELIVERIES = st.lists(DELIVERY, min_size=0, max_size=80)
LONG_DAYS = 61  # > qi_hist_long's 60 days

REFERENCE_STATS = """
SELECT qi_bucket(:grain, s.received_day, s.received_week, s.received_month) AS bucket, x.stage,
       count(x.v) AS n, percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY x.v) AS pc, max(x.v) AS mx
FROM qi_study s
CROSS JOIN LATERAL (VALUES ('wait_stable', s.wait_stable_s), ('to_ai', s.to_ai_s),
                           ('ai_round_trip', s.ai_round_trip_s), ('result_settle', s.result_settle_s),
                           ('to_destinations', s.to_destinations_s), ('turnaround', s.turnaround_s)) x (stage, v)
WHERE s.first_received_at >= :f AND s.first_received_at < :t AND x.v IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""
STATS = """SELECT bucket, stage, n, p50, p90, p95, max FROM qi_stage_stats(CAST(:f AS timestamptz),
           CAST(:t AS timestamptz), :grain) ORDER BY 1, 2"""
STATS_HIST = """SELECT bucket, stage, n, p50, p90, p95, max FROM qi_stage_stats_hist(CAST(:f AS timestamptz),
                CAST(:t AS timestamptz), :grain, NULL) ORDER BY 1, 2"""
SOME_STAGES = ("to_ai", "turnaround")
STATS_SOME = """SELECT bucket, stage, n, p50, p90, p95, max FROM qi_stage_stats(CAST(:f AS timestamptz),
                CAST(:t AS timestamptz), :grain, p_stages => CAST(:stages AS text[])) ORDER BY 1, 2"""
REFERENCE_HISTOGRAM = """
SELECT CASE WHEN v >= :mx THEN :mx ELSE floor(v / :bin) * :bin END AS lo, count(*) AS n
FROM (SELECT s.turnaround_s AS v FROM qi_study s
      WHERE s.first_received_at >= :f AND s.first_received_at < :t AND s.turnaround_s IS NOT NULL) x
GROUP BY 1 ORDER BY 1
"""
HISTOGRAM = """SELECT bin_start, n FROM qi_stage_histogram('turnaround', :bin, :mx, CAST(:f AS timestamptz),
               CAST(:t AS timestamptz)) ORDER BY 1"""
REFERENCE_OUTCOMES = """
SELECT qi_bucket(:grain, received_day, received_week, received_month), count(*), count(*) FILTER (WHERE routed),
       count(*) FILTER (WHERE outcome = 'unrouted'), count(*) FILTER (WHERE outcome = 'delivered'),
       count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'in_progress'),
       count(*) FILTER (WHERE outcome = 'no_delivery')
FROM qi_study WHERE first_received_at >= :f AND first_received_at < :t GROUP BY 1 ORDER BY 1
"""
OUTCOMES = """SELECT bucket, received, routed, unrouted, delivered, failed, in_progress, no_delivery
              FROM qi_study_outcomes(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain) ORDER BY 1"""
REFERENCE_VOLUME = """
SELECT qi_bucket(:grain, received_day, received_week, received_month),
       CASE :grp WHEN 'modality' THEN COALESCE(modality, '(none)') WHEN 'source_aet' THEN COALESCE(source_aet, '(none)')
                 ELSE 'all' END, count(*)
FROM qi_study WHERE first_received_at >= :f AND first_received_at < :t GROUP BY 1, 2 ORDER BY 1, 2
"""
VOLUME = """SELECT bucket, grp, studies FROM qi_volume(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain, :grp)
            ORDER BY 1, 2"""
REFERENCE_HEATMAP = """SELECT received_isodow, received_hour, count(*) FROM qi_study
                       WHERE first_received_at >= :f AND first_received_at < :t GROUP BY 1, 2 ORDER BY 1, 2"""
HEATMAP = """SELECT isodow, hour, studies FROM qi_volume_heatmap(CAST(:f AS timestamptz), CAST(:t AS timestamptz))
             ORDER BY 1, 2"""
REFERENCE_SLA = """
SELECT qi_bucket(:grain, s.received_day, s.received_week, s.received_month), x.metric,
       count(*) FILTER (WHERE x.state = 'met'), count(*) FILTER (WHERE x.state = 'breached'),
       count(*) FILTER (WHERE x.state = 'pending')
FROM qi_study s
CROSS JOIN LATERAL (VALUES ('ai_round_trip', s.sla_ai_round_trip), ('to_destinations', s.sla_to_destinations),
                           ('turnaround', s.sla_turnaround)) x (metric, state)
WHERE s.first_received_at >= :f AND s.first_received_at < :t AND x.state IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""
SLA = """SELECT bucket, metric, n_met, n_breached, n_pending FROM qi_sla_compliance(CAST(:f AS timestamptz),
         CAST(:t AS timestamptz), :grain) ORDER BY 1, 2"""
REFERENCE_DELIVERY_TIMES = """
SELECT qi_bucket(:grain, d.received_day, d.received_week, d.received_month), d.destination, d.purpose, count(*),
       percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.to_destination_s) AS td,
       max(d.to_destination_s) AS td_max,
       percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.turnaround_s) AS ta, max(d.turnaround_s) AS ta_max
FROM qi_delivery d
WHERE d.first_received_at >= :f AND d.first_received_at < :t AND d.completed_at IS NOT NULL
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
DELIVERY_TIMES_COLUMNS = """bucket, destination, purpose, n, to_destination_p50, to_destination_p90,
    to_destination_p95, to_destination_max, turnaround_p50, turnaround_p90, turnaround_p95, turnaround_max"""
DELIVERY_TIMES = f"""SELECT {DELIVERY_TIMES_COLUMNS} FROM qi_delivery_times(CAST(:f AS timestamptz),
                     CAST(:t AS timestamptz), :grain) ORDER BY 1, 2, 3"""
DELIVERY_TIMES_HIST = f"""SELECT {DELIVERY_TIMES_COLUMNS} FROM qi_delivery_times_hist(CAST(:f AS timestamptz),
                          CAST(:t AS timestamptz), :grain) ORDER BY 1, 2, 3"""
REFERENCE_DELIVERY_OUTCOMES = """
SELECT qi_bucket(:grain, d.received_day, d.received_week, d.received_month), d.destination, d.purpose, count(*),
       count(*) FILTER (WHERE d.outcome = 'succeeded'), count(*) FILTER (WHERE d.outcome = 'failed'),
       count(*) FILTER (WHERE d.outcome = 'in_progress')
FROM qi_delivery d
WHERE d.first_received_at >= :f AND d.first_received_at < :t AND d.outcome <> 'cancelled'
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
DELIVERY_OUTCOMES = """SELECT bucket, destination, purpose, sends, succeeded, failed, in_progress
                       FROM qi_delivery_outcomes(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain)
                       ORDER BY 1, 2, 3"""
REFERENCE_AI = """
SELECT qi_bucket(:grain, received_day, received_week, received_month), count(*) FILTER (WHERE ai_route),
       count(*) FILTER (WHERE ai_route AND ai_sent_at IS NULL), count(*) FILTER (WHERE ai_sent_at IS NOT NULL),
       count(*) FILTER (WHERE ai_result_state = 'on_time'), count(*) FILTER (WHERE ai_result_state = 'late'),
       count(*) FILTER (WHERE ai_result_state = 'overdue'), count(*) FILTER (WHERE ai_result_state = 'waiting')
FROM qi_study
WHERE first_received_at >= :f AND first_received_at < :t AND (ai_route OR ai_sent_at IS NOT NULL)
GROUP BY 1 ORDER BY 1
"""
AI_COLUMNS = "bucket, ai_routed, not_sent, sent, on_time, late, overdue_missing, waiting"
AI = f"""SELECT {AI_COLUMNS} FROM qi_ai_outcomes(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain)
         ORDER BY 1"""
AI_HIST = f"""SELECT {AI_COLUMNS} FROM qi_ai_outcomes_hist(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain)
              ORDER BY 1"""
REFERENCE_ATTEMPTS = """
SELECT qi_bucket(:grain, at_day, at_week, at_month), CASE WHEN :bydest THEN destination ELSE 'all' END, count(*),
       count(*) FILTER (WHERE failed), count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'dead')
FROM qi_attempt WHERE at >= :f AND at < :t GROUP BY 1, 2 ORDER BY 1, 2
"""
ATTEMPTS = """SELECT bucket, destination, attempts, failed, retried, dead
              FROM qi_attempt_failures(CAST(:f AS timestamptz), CAST(:t AS timestamptz), :grain, :bydest)
              ORDER BY 1, 2"""
DELIVERY_TABLES = ("SELECT day, destination, purpose, metric, bucket, n, (SELECT array_agg(v ORDER BY v) FROM "
                   "unnest(vals) v) FROM qi_delivery_hist ORDER BY 1, 2, 3, 4, 5",
                   "SELECT * FROM qi_delivery_cube ORDER BY 1, 2, 3, 4",
                   "SELECT * FROM qi_delivery_hist_month ORDER BY 1, 2, 3, 4, 5",
                   "SELECT * FROM qi_ai_day ORDER BY 1, 2, 3, 4")
ATTEMPT_DAY = """SELECT day, destination, outcome, sum(n) FROM qi_attempt_day GROUP BY 1, 2, 3 HAVING sum(n) <> 0
                 ORDER BY 1, 2, 3"""
CUBE_TABLE = "SELECT * FROM qi_study_cube ORDER BY 1, 2, 3, 4, 5, 6"
HIST_TABLE = """SELECT day, stage, bucket, n, (SELECT array_agg(v ORDER BY v) FROM unnest(vals) v) FROM qi_stage_hist
                ORDER BY 1, 2, 3"""
HIST_MONTH_TABLE = "SELECT * FROM qi_stage_hist_month ORDER BY 1, 2, 3"


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (both sides compute inf - inf the same way)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return bool(a == b)


def reference_stats(conn: Connection, params: dict[str, Any]) -> list[tuple]:
    rows = conn.execute(text(REFERENCE_STATS), params).all()
    return [(r.bucket, r.stage, r.n, r.pc[0], r.pc[1], r.pc[2], r.mx) for r in rows]


def reference_delivery_times(conn: Connection, params: dict[str, Any]) -> list[tuple]:
    rows = conn.execute(text(REFERENCE_DELIVERY_TIMES), params).all()
    return [(*r[:4], *(r.td or [None] * 3), r.td_max, *(r.ta or [None] * 3), r.ta_max) for r in rows]


def rows_of(conn: Connection, sql: str, params: dict[str, Any]) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(sql), params).all()]


BINS = ((150.0, 5400.0), (1.0, 100.0), (7.0, 1e9))


def assert_histogram(conn: Connection, f: datetime, t: datetime, bins: tuple[tuple[float, float], ...] = BINS) -> None:
    for bin_s, max_s in bins:
        params = {"f": f, "t": t, "bin": bin_s, "mx": max_s}
        want = rows_of(conn, REFERENCE_HISTOGRAM, params)
        assert_rows(rows_of(conn, HISTOGRAM, params), want, ("bins", params))


def assert_rows(got: list[tuple], want: list[tuple], what: str) -> None:
    assert len(got) == len(want), (what, got, want)
    for g, w in zip(got, want, strict=True):
        assert all(same(x, y) for x, y in zip(tuple(g), tuple(w), strict=True)), (what, g, w)


def sla_columns(i: int, at: datetime, values: tuple) -> dict[str, Any]:
    """The columns the SLA states read, as qi_study_live makes them: a turnaround or
    to_destinations value only with a delivery expected (and, for the latter, ready_at),
    a round trip only with ai_sent_at and a result. Some starts are now, so that those
    studies without a value are pending rather than breached."""
    start = datetime.now(UTC) if i % 5 == 0 else at + timedelta(seconds=60)
    rt, td, ta = values[2], values[4], values[5]
    return {"expected": ta is not None or td is not None or i % 2 == 0,
            "ready": start if td is not None or i % 3 != 0 else None,
            "sent": start if rt is not None or i % 2 == 1 else None,
            "result": at + timedelta(seconds=90) if rt is not None or i % 4 == 1 else None}


def fill(conn: Connection, rows: list[tuple]) -> None:
    """Cached rows only (no core tables): a dirty study then has no live row and drops out
    of qi_study, which the histograms must also account for."""
    conn.execute(text("TRUNCATE qi_study_fact"))
    conn.execute(text("TRUNCATE qi_delivery_fact"))
    conn.execute(text("DELETE FROM qi_dirty"))
    insert(conn, rows, 1)


def insert(conn: Connection, rows: list[tuple], first_id: int) -> None:
    for i, (day, second, values, dirty, dims) in enumerate(rows, start=first_id):
        at = datetime.combine(DAY_DATES[day], datetime.min.time(), tzinfo=LA).astimezone(UTC)
        conn.execute(text(
            "INSERT INTO qi_study_fact (study_id, first_received_at, wait_stable_s, to_ai_s, ai_round_trip_s, "
            "result_settle_s, to_destinations_s, turnaround_s, modality, source_aet, routed, outcome, "
            "delivery_expected, ready_at, ai_sent_at, ai_result_at, ai_route) "
            "VALUES (:id, :at, :v0, :v1, :v2, :v3, :v4, :v5, :m, :s, :r, :o, :expected, :ready, :sent, :result, "
            ":ai_route)"),
            {"id": i, "at": at + timedelta(seconds=second), **{f"v{k}": v for k, v in enumerate(values)},
             "m": dims[0], "s": dims[1], "r": dims[2], "o": dims[3], **sla_columns(i, at, values),
             "ai_route": i % 3 != 1})
        if dirty and i % 3 == 0:
            conn.execute(text("INSERT INTO qi_dirty (study_id) VALUES (:id)"), {"id": i})


def insert_deliveries(conn: Connection, deliveries: list[tuple], first_id: int, studies: int) -> None:
    """Cached delivery rows of the studies first_id .. first_id + studies - 1, received when
    their study was (dirty studies drop out of qi_delivery as they do of qi_study)."""
    if not studies:
        return
    for k, (index, destination, purpose, outcome, td, ta) in enumerate(deliveries):
        study = first_id + index % studies
        done = outcome == "succeeded"
        conn.execute(text(
            "INSERT INTO qi_delivery_fact (study_id, purpose, destination, first_received_at, outcome, completed_at, "
            "to_destination_s, turnaround_s) SELECT :id, :p, :d, f.first_received_at, :o, "
            "CASE WHEN :done THEN f.first_received_at + interval '1 hour' END, :td, :ta "
            "FROM qi_study_fact f WHERE f.study_id = :id "
            "ON CONFLICT DO NOTHING"),  # one row per (study, purpose, destination), as qi_send makes them
            {"id": study, "p": purpose, "d": f"{destination}{k}" if k % 4 == 0 else destination, "o": outcome,
             "done": done, "td": td if done else None, "ta": ta if done else None})


def check_deliveries(conn: Connection, windows: list[tuple[datetime, datetime]],
                     long: list[tuple[datetime, datetime]]) -> None:
    """qi_delivery_times, qi_delivery_outcomes and qi_ai_outcomes against their definitions
    over qi_delivery / qi_study: the _hist functions directly over the short windows, the
    public functions over the long ones (where they read the per-day tables)."""
    qi.prepare(conn)
    for (f, t), public in [(w, False) for w in windows] + [(w, True) for w in long]:
        for grain in ("all", "day", "week", "month"):
            params = {"f": f, "t": t, "grain": grain}
            want = reference_delivery_times(conn, params)
            got = DELIVERY_TIMES if public else DELIVERY_TIMES_HIST
            assert_rows(rows_of(conn, got, params), want, ("delivery_times", public, params))
            want = rows_of(conn, REFERENCE_AI, params)
            assert_rows(rows_of(conn, AI if public else AI_HIST, params), want, ("ai_outcomes", public, params))
            if public:
                want = rows_of(conn, REFERENCE_DELIVERY_OUTCOMES, params)
                assert_rows(rows_of(conn, DELIVERY_OUTCOMES, params), want, ("delivery_outcomes", params))


def long_windows(origin: datetime, instants: tuple[int, int], first: date = FIRST_DAY) -> list[tuple[datetime, datetime]]:
    """Windows of more than 60 days around the data: whole local days, and a partial day
    at either end falling inside the data (for the studies' days, months wholly inside
    and partial months at either end)."""
    start = origin + timedelta(seconds=instants[0])
    end = origin + timedelta(seconds=instants[0] + instants[1])
    whole = QiFilter(first - timedelta(days=30), first + timedelta(days=LONG_DAYS - 30)).bounds(LA)
    return [whole, (start, start + timedelta(days=LONG_DAYS)), (end - timedelta(days=LONG_DAYS), end)]


# Whole months: January to March, and February alone (the data on either side of it).
MONTH_WINDOWS = [QiFilter(date(2026, 1, 1), date(2026, 3, 31)).bounds(LA),
                 QiFilter(date(2026, 2, 1), date(2026, 2, 28)).bounds(LA)]


def check_all(conn: Connection, windows: list[tuple[datetime, datetime]]) -> None:
    qi.prepare(conn)
    for f, t in windows:
        for grain in ("all", "day", "week", "month"):
            params = {"f": f, "t": t, "grain": grain}
            want = reference_stats(conn, params)
            assert_rows([tuple(r) for r in conn.execute(text(STATS), params).all()], want, ("stats", params))
            assert_rows([tuple(r) for r in conn.execute(text(STATS_HIST), params).all()], want, ("hist", params))
            want = [tuple(r) for r in conn.execute(text(REFERENCE_OUTCOMES), params).all()]
            assert_rows([tuple(r) for r in conn.execute(text(OUTCOMES), params).all()], want, ("outcomes", params))
            want = [tuple(r) for r in conn.execute(text(REFERENCE_SLA), params).all()]
            assert_rows([tuple(r) for r in conn.execute(text(SLA), params).all()], want, ("sla", params))
            for grp in ("none", "modality", "source_aet"):
                want = [tuple(r) for r in conn.execute(text(REFERENCE_VOLUME), {**params, "grp": grp}).all()]
                got = [tuple(r) for r in conn.execute(text(VOLUME), {**params, "grp": grp}).all()]
                assert_rows(got, want, ("volume", grp, params))
        params = {"f": f, "t": t}
        want = [tuple(r) for r in conn.execute(text(REFERENCE_HEATMAP), params).all()]
        assert_rows([tuple(r) for r in conn.execute(text(HEATMAP), params).all()], want, ("heatmap", params))
        assert_histogram(conn, f, t)


def check_months(conn: Connection, windows: list[tuple[datetime, datetime]]) -> None:
    """What 0015 answers from whole months (grains 'all' and 'month'): qi_stage_stats,
    qi_sla_compliance and qi_stage_histogram over windows holding whole calendar months;
    and qi_stage_stats for some stages only (qi_hist_stage_ids), over the whole window and
    per day as the pages ask."""
    qi.prepare(conn)
    for f, t in windows:
        for grain in ("all", "month", "day"):
            params = {"f": f, "t": t, "grain": grain}
            want = reference_stats(conn, params)
            if grain != "day":
                assert_rows(rows_of(conn, STATS, params), want, ("stats", params))
                assert_rows(rows_of(conn, SLA, params), rows_of(conn, REFERENCE_SLA, params), ("sla", params))
            if grain != "month":
                some = [w for w in want if w[1] in SOME_STAGES]
                assert_rows(rows_of(conn, STATS_SOME, {**params, "stages": list(SOME_STAGES)}), some, ("some", params))
        assert_histogram(conn, f, t, BINS[:1])


def assert_hist_is_recomputed(conn: Connection) -> None:
    tables = (HIST_TABLE, HIST_MONTH_TABLE, CUBE_TABLE, *DELIVERY_TABLES)
    kept = [conn.execute(text(sql)).all() for sql in tables]
    conn.execute(text("SELECT qi_stage_hist_fill(NULL), qi_study_cube_fill(NULL), qi_ai_day_fill(NULL), "
                      "qi_delivery_hist_fill(NULL)"))
    assert kept == [conn.execute(text(sql)).all() for sql in tables]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, window=WINDOW, instants=INSTANTS, more=ROWS, deliveries=DELIVERIES, more_deliveries=DELIVERIES)
def test_histogram_percentiles_equal_percentile_cont(db: Engine, rows: list[tuple], window: tuple[int, int],
                                                     instants: tuple[int, int], more: list[tuple],
                                                     deliveries: list[tuple], more_deliveries: list[tuple]) -> None:
    start, end = sorted(window)
    whole = QiFilter(DAY_DATES[start], DAY_DATES[end]).bounds(LA)
    origin = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=LA).astimezone(UTC)
    partial = (origin + timedelta(seconds=instants[0]), origin + timedelta(seconds=instants[0] + instants[1]))
    windows = [whole, partial]
    with db.begin() as conn:
        fill(conn, rows)
        insert_deliveries(conn, deliveries, 1, len(rows))
        values = sum(v is not None for r in rows for v in r[2])
        assert conn.execute(text("SELECT COALESCE(sum(n), 0) FROM qi_stage_hist")).scalar() == values
        assert conn.execute(text("SELECT COALESCE(sum(n), 0) FROM qi_delivery_cube")).scalar() == \
            conn.execute(text("SELECT count(*) FROM qi_delivery_fact")).scalar()
        check_all(conn, windows)
        check_months(conn, [long_windows(origin, instants)[1], MONTH_WINDOWS[0]])
        check_deliveries(conn, windows, long_windows(origin, instants))
        # the cache changes as qi_refresh / the loader change it: deletes, updates, inserts
        conn.execute(text("DELETE FROM qi_study_fact WHERE study_id % 4 = 1"))
        conn.execute(text("DELETE FROM qi_delivery_fact WHERE study_id % 4 = 1"))
        conn.execute(text("UPDATE qi_study_fact SET turnaround_s = turnaround_s * 2, "
                          "first_received_at = first_received_at + interval '20 hours' WHERE study_id % 5 = 2"))
        conn.execute(text("UPDATE qi_delivery_fact SET turnaround_s = turnaround_s * 2, "
                          "first_received_at = first_received_at + interval '20 hours' WHERE study_id % 5 = 2"))
        insert(conn, more, 10_000)
        insert_deliveries(conn, more_deliveries, 10_000, len(more))
        assert_hist_is_recomputed(conn)
        check_all(conn, windows)
        check_months(conn, [long_windows(origin, instants)[2], MONTH_WINDOWS[1]])
        check_deliveries(conn, windows, long_windows(origin, instants))
        conn.rollback()


def test_histograms_follow_the_cache_and_the_time_zone(db: Engine) -> None:
    rows = [(d % DAYS, (d * 7919) % 86_400, tuple(float((d * k) % 5000) for k in range(1, 7)), False,
             ("CT", "MOD_A", True, "delivered")) for d in range(400)]
    deliveries = [(d, "PACS", "delivery", "succeeded", float(d), float(3 * d)) for d in range(0, 400, 3)]
    with db.begin() as conn:
        fill(conn, rows)
        insert_deliveries(conn, deliveries, 1, len(rows))
        assert conn.execute(text("SELECT count(DISTINCT day) FROM qi_stage_hist")).scalar() == DAYS
        before = conn.execute(text(HIST_TABLE)).all()
        conn.execute(text("UPDATE qi_settings SET tz = 'Asia/Tokyo'"))
        after = conn.execute(text(HIST_TABLE)).all()
        assert after != before  # the days moved with the zone
        assert_hist_is_recomputed(conn)
        tokyo = QiFilter(FIRST_DAY, FIRST_DAY + timedelta(days=3)).bounds(ZoneInfo("Asia/Tokyo"))
        check_all(conn, [tokyo])
        check_months(conn, [QiFilter(date(2026, 1, 1), date(2026, 3, 31)).bounds(ZoneInfo("Asia/Tokyo"))])
        check_deliveries(conn, [tokyo], [QiFilter(FIRST_DAY - timedelta(days=30),
                                                  FIRST_DAY + timedelta(days=40)).bounds(ZoneInfo("Asia/Tokyo"))])
        conn.execute(text("TRUNCATE qi_study_fact, qi_delivery_fact"))
        assert conn.execute(text("SELECT count(*) FROM qi_stage_hist")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM qi_delivery_hist")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM qi_ai_day")).scalar() == 0
        conn.rollback()


def test_filters_and_groups_read_every_study(db: Engine) -> None:
    """With a filter the histograms cannot answer: the function must not use them (a
    histogram that disagrees with the cache would otherwise show)."""
    rows = [(d % DAYS, 3600 + d, (1.0, 2.0, 3.0, 4.0, 5.0, float(d)), False, ("MR", "MOD_A", True, "delivered"))
            for d in range(50)]
    with db.begin() as conn:
        fill(conn, rows)
        conn.execute(text("ALTER TABLE qi_study_fact DISABLE TRIGGER qi_stage_hist_upd"))
        conn.execute(text("UPDATE qi_study_fact SET modality = 'CT', turnaround_s = turnaround_s + 1"))
        f, t = QiFilter(FIRST_DAY, DAY_DATES[-1]).bounds(LA)
        stale = conn.execute(text(STATS), {"f": f, "t": t, "grain": "all"}).all()
        filtered = conn.execute(text(
            "SELECT bucket, stage, n, p50, p90, p95, max FROM qi_stage_stats(CAST(:f AS timestamptz), "
            "CAST(:t AS timestamptz), 'all', p_modality => ARRAY['CT']) ORDER BY 1, 2"), {"f": f, "t": t}).all()
        want = reference_stats(conn, {"f": f, "t": t, "grain": "all"})
        assert_rows([tuple(r) for r in filtered], want, "filtered")
        assert [tuple(r) for r in stale] != [tuple(r) for r in filtered]  # the histograms were not read
        conn.rollback()


# (day, second of the day, type, destination): finished attempts and other events
EVENT = st.tuples(st.integers(-1, DAYS), st.integers(0, 86_399),
                  st.sampled_from(["ai_sent", "delivered", "delivery_failed", "delivery_dead", "delivery_started",
                                   "received"]),
                  st.sampled_from([None, "PACS", "ARCHIVE", "AI"]))


def insert_events(conn: Connection, events: list[tuple], study_ids: list[int]) -> None:
    """One statement, as the recorder and the loader write several events at once."""
    origin = datetime.combine(EVENTS_FIRST_DAY, datetime.min.time(), tzinfo=LA).astimezone(UTC)
    if events:
        conn.execute(text("INSERT INTO events (study_id, type, at, destination) "
                          "SELECT * FROM unnest(CAST(:s AS bigint[]), CAST(:ty AS text[]), "
                          "CAST(:at AS timestamptz[]), CAST(:d AS text[]))"),
                     {"s": [study_ids[i % len(study_ids)] for i in range(len(events))],
                      "ty": [e[2] for e in events], "d": [e[3] for e in events],
                      "at": [origin + timedelta(days=e[0], seconds=e[1]) for e in events]})


def check_attempts(conn: Connection, windows: list[tuple[datetime, datetime]]) -> None:
    qi.prepare(conn)
    for f, t in windows:
        for grain in ("all", "day", "week", "month"):
            for bydest in (True, False):
                params = {"f": f, "t": t, "grain": grain, "bydest": bydest}
                want = rows_of(conn, REFERENCE_ATTEMPTS, params)
                assert_rows(rows_of(conn, ATTEMPTS, params), want, ("attempts", params))


def assert_attempt_days_recomputed(conn: Connection) -> None:
    kept = conn.execute(text(ATTEMPT_DAY)).all()
    conn.execute(text("SELECT qi_attempt_day_fill()"))
    assert kept == conn.execute(text(ATTEMPT_DAY)).all()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENT, max_size=80), more=st.lists(EVENT, max_size=40), instants=INSTANTS)
def test_attempt_counts_per_day_equal_the_events(db: Engine, events: list[tuple], more: list[tuple],
                                                 instants: tuple[int, int]) -> None:
    """qi_attempt_failures over long windows counts whole days from qi_attempt_day, which
    the events' triggers keep (inserts, deletes, a study's cascade, compaction, TZ)."""
    origin = datetime.combine(EVENTS_FIRST_DAY, datetime.min.time(), tzinfo=LA).astimezone(UTC)
    with db.begin() as conn:
        ids = [conn.execute(text("INSERT INTO studies (study_uid) VALUES (:u) RETURNING id"),
                            {"u": f"1.2.826.0.1.{k}"}).scalar_one() for k in range(3)]
        insert_events(conn, events, ids)
        windows = long_windows(origin, instants, EVENTS_FIRST_DAY)
        check_attempts(conn, windows)
        insert_events(conn, more, ids)
        conn.execute(text("DELETE FROM events WHERE id % 3 = 0"))
        check_attempts(conn, windows)
        conn.execute(text("SELECT qi_attempt_day_compact()"))
        assert conn.execute(text("SELECT count(*) FROM (SELECT 1 FROM qi_attempt_day GROUP BY day, destination, "
                                 "outcome HAVING count(*) > 1 OR sum(n) = 0) x")).scalar() == 0
        check_attempts(conn, windows)
        conn.execute(text("DELETE FROM studies WHERE id = :id"), {"id": ids[0]})
        assert_attempt_days_recomputed(conn)
        check_attempts(conn, windows)
        conn.execute(text("UPDATE qi_settings SET tz = 'Asia/Tokyo'"))
        assert_attempt_days_recomputed(conn)
        check_attempts(conn, [QiFilter(EVENTS_FIRST_DAY - timedelta(days=30),
                                       EVENTS_FIRST_DAY + timedelta(days=40)).bounds(ZoneInfo("Asia/Tokyo"))])
        conn.rollback()
