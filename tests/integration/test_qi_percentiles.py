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
FIRST_DAY = date(2026, 3, 5)  # the spring DST change (2026-03-08) falls inside the 8 days
DAYS = 8
STAGES = ("wait_stable", "to_ai", "ai_round_trip", "result_settle", "to_destinations", "turnaround")

# Durations drawn so that ties, bucket edges and extremes are frequent.
VALUE = st.one_of(
    st.none(),
    st.sampled_from([0.0, 1.0, 5.0, 63.0, 64.0, 65.0, 600.0, 3600.0, 1e12, math.inf]),
    st.integers(min_value=0, max_value=20_000).map(float),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
DIMS = st.tuples(st.sampled_from([None, "CT", "MR"]), st.sampled_from([None, "MOD_A", "MOD_B"]), st.booleans(),
                 st.sampled_from(["unrouted", "delivered", "failed", "in_progress", "no_delivery"]))
ROW = st.tuples(st.integers(0, DAYS - 1), st.integers(0, 86_399), st.tuples(*[VALUE] * len(STAGES)), st.booleans(),
                DIMS)
ROWS = st.lists(ROW, min_size=0, max_size=120)
WINDOW = st.tuples(st.integers(0, DAYS - 1), st.integers(0, DAYS - 1))
INSTANTS = st.tuples(st.integers(-86_400, (DAYS + 1) * 86_400), st.integers(1, DAYS * 86_400))

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
CUBE_TABLE = "SELECT * FROM qi_study_cube ORDER BY 1, 2, 3, 4, 5, 6"
HIST_TABLE = """SELECT day, stage, bucket, n, (SELECT array_agg(v ORDER BY v) FROM unnest(vals) v) FROM qi_stage_hist
                ORDER BY 1, 2, 3"""


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (both sides compute inf - inf the same way)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return bool(a == b)


def reference_stats(conn: Connection, params: dict[str, Any]) -> list[tuple]:
    rows = conn.execute(text(REFERENCE_STATS), params).all()
    return [(r.bucket, r.stage, r.n, r.pc[0], r.pc[1], r.pc[2], r.mx) for r in rows]


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
    conn.execute(text("DELETE FROM qi_dirty"))
    insert(conn, rows, 1)


def insert(conn: Connection, rows: list[tuple], first_id: int) -> None:
    for i, (day, second, values, dirty, dims) in enumerate(rows, start=first_id):
        at = datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(), tzinfo=LA).astimezone(UTC)
        conn.execute(text(
            "INSERT INTO qi_study_fact (study_id, first_received_at, wait_stable_s, to_ai_s, ai_round_trip_s, "
            "result_settle_s, to_destinations_s, turnaround_s, modality, source_aet, routed, outcome, "
            "delivery_expected, ready_at, ai_sent_at, ai_result_at) "
            "VALUES (:id, :at, :v0, :v1, :v2, :v3, :v4, :v5, :m, :s, :r, :o, :expected, :ready, :sent, :result)"),
            {"id": i, "at": at + timedelta(seconds=second), **{f"v{k}": v for k, v in enumerate(values)},
             "m": dims[0], "s": dims[1], "r": dims[2], "o": dims[3], **sla_columns(i, at, values)})
        if dirty and i % 3 == 0:
            conn.execute(text("INSERT INTO qi_dirty (study_id) VALUES (:id)"), {"id": i})


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
        for bin_s, max_s in ((150.0, 5400.0), (1.0, 100.0), (7.0, 1e9)):
            params = {"f": f, "t": t, "bin": bin_s, "mx": max_s}
            want = [tuple(r) for r in conn.execute(text(REFERENCE_HISTOGRAM), params).all()]
            assert_rows([tuple(r) for r in conn.execute(text(HISTOGRAM), params).all()], want, ("bins", params))


def assert_hist_is_recomputed(conn: Connection) -> None:
    kept = conn.execute(text(HIST_TABLE)).all(), conn.execute(text(CUBE_TABLE)).all()
    conn.execute(text("SELECT qi_stage_hist_fill(NULL), qi_study_cube_fill(NULL)"))
    assert kept == (conn.execute(text(HIST_TABLE)).all(), conn.execute(text(CUBE_TABLE)).all())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, window=WINDOW, instants=INSTANTS, more=ROWS)
def test_histogram_percentiles_equal_percentile_cont(db: Engine, rows: list[tuple], window: tuple[int, int],
                                                     instants: tuple[int, int], more: list[tuple]) -> None:
    start, end = sorted(window)
    whole = QiFilter(FIRST_DAY + timedelta(days=start), FIRST_DAY + timedelta(days=end)).bounds(LA)
    origin = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=LA).astimezone(UTC)
    partial = (origin + timedelta(seconds=instants[0]), origin + timedelta(seconds=instants[0] + instants[1]))
    windows = [whole, partial]
    with db.begin() as conn:
        fill(conn, rows)
        values = sum(v is not None for r in rows for v in r[2])
        assert conn.execute(text("SELECT COALESCE(sum(n), 0) FROM qi_stage_hist")).scalar() == values
        check_all(conn, windows)
        # the cache changes as qi_refresh / the loader change it: deletes, updates, inserts
        conn.execute(text("DELETE FROM qi_study_fact WHERE study_id % 4 = 1"))
        conn.execute(text("UPDATE qi_study_fact SET turnaround_s = turnaround_s * 2, "
                          "first_received_at = first_received_at + interval '20 hours' WHERE study_id % 5 = 2"))
        insert(conn, more, 10_000)
        assert_hist_is_recomputed(conn)
        check_all(conn, windows)
        conn.rollback()


def test_histograms_follow_the_cache_and_the_time_zone(db: Engine) -> None:
    rows = [(d % DAYS, (d * 7919) % 86_400, tuple(float((d * k) % 5000) for k in range(1, 7)), False,
             ("CT", "MOD_A", True, "delivered")) for d in range(400)]
    with db.begin() as conn:
        fill(conn, rows)
        assert conn.execute(text("SELECT count(DISTINCT day) FROM qi_stage_hist")).scalar() == DAYS
        before = conn.execute(text(HIST_TABLE)).all()
        conn.execute(text("UPDATE qi_settings SET tz = 'Asia/Tokyo'"))
        after = conn.execute(text(HIST_TABLE)).all()
        assert after != before  # the days moved with the zone
        assert_hist_is_recomputed(conn)
        tokyo = QiFilter(FIRST_DAY, FIRST_DAY + timedelta(days=3)).bounds(ZoneInfo("Asia/Tokyo"))
        check_all(conn, [tokyo])
        conn.execute(text("TRUNCATE qi_study_fact"))
        assert conn.execute(text("SELECT count(*) FROM qi_stage_hist")).scalar() == 0
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
        f, t = QiFilter(FIRST_DAY, FIRST_DAY + timedelta(days=DAYS)).bounds(LA)
        stale = conn.execute(text(STATS), {"f": f, "t": t, "grain": "all"}).all()
        filtered = conn.execute(text(
            "SELECT bucket, stage, n, p50, p90, p95, max FROM qi_stage_stats(CAST(:f AS timestamptz), "
            "CAST(:t AS timestamptz), 'all', p_modality => ARRAY['CT']) ORDER BY 1, 2"), {"f": f, "t": t}).all()
        want = reference_stats(conn, {"f": f, "t": t, "grain": "all"})
        assert_rows([tuple(r) for r in filtered], want, "filtered")
        assert [tuple(r) for r in stale] != [tuple(r) for r in filtered]  # the histograms were not read
        conn.rollback()
