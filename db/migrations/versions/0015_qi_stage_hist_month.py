"""Month rollup of the stage histograms: the Turnaround page over a year from a dozen months' counts.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Issue 19 goal 3, what 0014 left: the Turnaround page's own stage calls (qi_stage_stats,
qi_sla_compliance, qi_stage_histogram) summed a year of qi_stage_hist's per-day bucket
counts (~150k rows at 1M studies) on every call, and the per-day grain read every stage's
rows to keep one stage's.

- qi_stage_hist_month: the bucket counts of qi_stage_hist summed per calendar month (as
  0014's qi_delivery_hist_month for the deliveries), kept by qi_stage_hist_fill, so by the
  same triggers on qi_study_fact and qi_settings.tz. qi_hist_counts gives the callers the
  counts of the whole months of a window from it, and of the days before and after them
  from qi_stage_hist (grain 'all' or 'month'); qi_stage_stats_hist, qi_sla_compliance_hist,
  qi_stage_histogram_hist and qi_ai_outcomes_hist read it. The values of a target bucket
  are still read per day (qi_stage_hist_bucket_idx), so the results are unchanged.
- qi_hist_stage_ids: the asked stages as a constant of the custom plan, so that a scan of
  qi_stage_hist reads only those stages.

Same function names and result shapes; exactness: tests/integration/test_qi_percentiles.py.
"""

from alembic import op

from core import schema_sql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

LOADS_DB_SQL = True

TABLES = """
CREATE TABLE qi_stage_hist_month (
    month  date     NOT NULL,
    stage  smallint NOT NULL,
    bucket integer  NOT NULL,
    n      bigint   NOT NULL,
    PRIMARY KEY (month, stage, bucket)
);
-- what qi_stage_hist_fill would write, from the days' rows as they are (plain SQL: this
-- holds whether or not this migration loads db/sql)
INSERT INTO qi_stage_hist_month (month, stage, bucket, n)
SELECT date_trunc('month', h.day)::date, h.stage, h.bucket, sum(h.n) FROM qi_stage_hist h GROUP BY 1, 2, 3;
"""

# 0012's triggers, when no earlier migration could create them (as in
# 0014_qi_delivery_hist.py; today's qi_stage_hist_fill also fills qi_stage_hist_month).
STAGE_HIST_TRIGGERS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'qi_stage_hist_ins'
                   AND tgrelid = 'qi_study_fact'::regclass) THEN
        CREATE TRIGGER qi_stage_hist_ins AFTER INSERT ON qi_study_fact
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_upd AFTER UPDATE ON qi_study_fact
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_del AFTER DELETE ON qi_study_fact
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_trunc AFTER TRUNCATE ON qi_study_fact
            FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_tz AFTER UPDATE OF tz ON qi_settings
            FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_stage_hist_sync();
        PERFORM qi_stage_hist_fill(NULL);
        PERFORM qi_study_cube_fill(NULL);
    END IF;
END $$;
"""

# 0014's triggers (0014_qi_delivery_hist.py TRIGGERS), when 0014 was not the newest loading
# migration at its upgrade and so could not create them.
DELIVERY_TRIGGERS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'qi_delivery_hist_ins'
                   AND tgrelid = 'qi_delivery_fact'::regclass) THEN
        CREATE TRIGGER qi_delivery_hist_ins AFTER INSERT ON qi_delivery_fact
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
        CREATE TRIGGER qi_delivery_hist_upd AFTER UPDATE ON qi_delivery_fact
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
        CREATE TRIGGER qi_delivery_hist_del AFTER DELETE ON qi_delivery_fact
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
        CREATE TRIGGER qi_delivery_hist_trunc AFTER TRUNCATE ON qi_delivery_fact
            FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
        CREATE TRIGGER qi_delivery_hist_tz AFTER UPDATE OF tz ON qi_settings
            FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_delivery_hist_sync();
        CREATE TRIGGER qi_attempt_day_ins AFTER INSERT ON events
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
        CREATE TRIGGER qi_attempt_day_upd AFTER UPDATE ON events
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
        CREATE TRIGGER qi_attempt_day_del AFTER DELETE ON events
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
        CREATE TRIGGER qi_attempt_day_trunc AFTER TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
        CREATE TRIGGER qi_attempt_day_tz AFTER UPDATE OF tz ON qi_settings
            FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_attempt_day_sync();
        PERFORM qi_delivery_hist_fill(NULL);
        PERFORM qi_ai_day_fill(NULL);
        PERFORM qi_attempt_day_fill();
    END IF;
END $$;
"""

# What 0014 left (db/sql at 0014), restored by the downgrade.
OLD_STAGE_HIST_FILL = r"""
-- Recompute the per-day histograms (qi_stage_hist) of the given local days in TZ from the
-- cached rows qi_study_fact, all days when p_days is NULL. Called by the triggers of
-- qi_study_fact (qi_stage_hist_sync), so qi_refresh, qi_rebuild and the loader of db/sql
-- keep it in step with the cache, and when qi_settings.tz changes (the day of a study
-- depends on it). Per (day, stage, bucket): the count and the values themselves.
CREATE OR REPLACE FUNCTION qi_stage_hist_fill(p_days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
BEGIN
    IF p_days IS NULL THEN
        DELETE FROM qi_stage_hist;
        INSERT INTO qi_stage_hist (day, stage, bucket, n, vals)
        SELECT r.day, x.stage, qi_hist_bucket(x.v), count(*), array_agg(x.v)
        FROM (SELECT (f.first_received_at AT TIME ZONE v_tz)::date AS day, f.* FROM qi_study_fact f
              WHERE f.first_received_at IS NOT NULL) r
        CROSS JOIN LATERAL (VALUES (1::smallint, r.wait_stable_s), (2::smallint, r.to_ai_s),
                                   (3::smallint, r.ai_round_trip_s), (4::smallint, r.result_settle_s),
                                   (5::smallint, r.to_destinations_s), (6::smallint, r.turnaround_s)) AS x (stage, v)
        WHERE x.v IS NOT NULL
        GROUP BY 1, 2, 3;
    ELSE
        DELETE FROM qi_stage_hist WHERE day = ANY (p_days);
        INSERT INTO qi_stage_hist (day, stage, bucket, n, vals)
        SELECT d.day, x.stage, qi_hist_bucket(x.v), count(*), array_agg(x.v)
        FROM (SELECT DISTINCT unnest(p_days) AS day) d
        JOIN qi_study_fact f ON f.first_received_at >= d.day::timestamp AT TIME ZONE v_tz - interval '1 day'
                            AND f.first_received_at < (d.day + 1)::timestamp AT TIME ZONE v_tz + interval '1 day'
                            AND (f.first_received_at AT TIME ZONE v_tz)::date = d.day
        CROSS JOIN LATERAL (VALUES (1::smallint, f.wait_stable_s), (2::smallint, f.to_ai_s),
                                   (3::smallint, f.ai_round_trip_s), (4::smallint, f.result_settle_s),
                                   (5::smallint, f.to_destinations_s), (6::smallint, f.turnaround_s)) AS x (stage, v)
        WHERE x.v IS NOT NULL
        GROUP BY 1, 2, 3;
    END IF;
END $$;
"""

OLD_STAGE_STATS_HIST = r"""
-- qi_stage_stats without filters or groups, from the per-day histograms: the same
-- numbers (percentile_cont's, exactly), without reading every study of the window.
-- PostgreSQL's percentile_cont(p) over N sorted values is v[floor(p(N-1))] when
-- p(N-1) is whole, else v[lo] + (v[hi] - v[lo]) * f, f = p(N-1) - lo, with lo, hi its
-- floor and ceil (0-based ranks, float8 arithmetic); percentile_cont(f) over the two
-- values v[lo], v[hi] computes exactly that last step. The bucket counts summed over the
-- window's days (plus qi_hist_delta) give each bucket's first rank, hence the bucket
-- holding each rank needed (lo and hi may fall in two); only the values of those buckets
-- are sorted, and the rank inside them picks the value. Buckets never overlap in value
-- (qi_hist_bucket), so this is the value percentile_cont sorts to that rank. max is the
-- value at rank N - 1. Called by qi_stage_stats.
CREATE OR REPLACE FUNCTION qi_stage_stats_hist(p_from timestamptz, p_to timestamptz, p_grain text,
                                               p_stages text[])
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, stage text, n bigint,
               p50 double precision, p90 double precision, p95 double precision, max double precision)
LANGUAGE sql STABLE AS $$
    WITH w AS (
        SELECT * FROM qi_hist_days(p_from, p_to)
    ), st AS (
        SELECT array_agg(s.i::smallint) AS ids
        FROM unnest(qi_hist_stages()) WITH ORDINALITY AS s (name, i) WHERE qi_wants(p_stages, s.name)
    ), d AS MATERIALIZED (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, x.stage, x.hb, x.sgn, x.v
        FROM st CROSS JOIN qi_hist_delta(p_from, p_to) x WHERE x.stage = ANY (st.ids)
    ), c AS (
        SELECT y.bk, y.stage, y.hb, sum(y.n)::bigint AS n
        FROM (
            SELECT COALESCE(qi_bucket(p_grain, h.day, date_trunc('week', h.day)::date,
                                      date_trunc('month', h.day)::date), 'infinity') AS bk,
                   h.stage, h.bucket AS hb, h.n::bigint AS n
            FROM st CROSS JOIN w JOIN qi_stage_hist h ON h.day BETWEEN w.d1 AND w.d2
            WHERE h.stage = ANY (st.ids)
            UNION ALL
            SELECT d.bk, d.stage, d.hb, d.sgn FROM d
        ) y
        GROUP BY 1, 2, 3
        HAVING sum(y.n) <> 0
    ), cum AS (   -- each bucket's first rank, and the ranks needed (floor and ceil of p(N-1), N-1)
        SELECT c.*, sum(c.n) OVER (PARTITION BY c.bk, c.stage ORDER BY c.hb) - c.n AS before,
               sum(c.n) OVER (PARTITION BY c.bk, c.stage) AS total
        FROM c
    ), tg AS MATERIALIZED (  -- the histogram buckets holding a rank needed
        SELECT cum.bk, cum.stage, cum.hb, cum.before::bigint AS before, r.ranks
        FROM cum
        CROSS JOIN LATERAL (
            SELECT ARRAY[floor(0.5::double precision * (cum.total - 1)::double precision),
                         ceil(0.5::double precision * (cum.total - 1)::double precision),
                         floor(0.9::double precision * (cum.total - 1)::double precision),
                         ceil(0.9::double precision * (cum.total - 1)::double precision),
                         floor(0.95::double precision * (cum.total - 1)::double precision),
                         ceil(0.95::double precision * (cum.total - 1)::double precision),
                         cum.total - 1]::bigint[] AS ranks) r
        WHERE int8range(cum.before::bigint, (cum.before + cum.n)::bigint) @> ANY (r.ranks)
    ), vals AS (  -- their values: the histograms' plus the delta's, less the delta's stale ones
        (SELECT tg.bk, tg.stage, tg.hb, u.v
         FROM tg CROSS JOIN w
         JOIN qi_stage_hist h ON h.stage = tg.stage AND h.bucket = tg.hb
          AND h.day BETWEEN GREATEST(w.d1, CASE WHEN p_grain IN ('day', 'week', 'month') THEN tg.bk END)
                        AND LEAST(w.d2, CASE p_grain WHEN 'day' THEN tg.bk WHEN 'week' THEN tg.bk + 6
                                                     WHEN 'month' THEN (tg.bk + interval '1 month')::date - 1 END)
         CROSS JOIN LATERAL unnest(h.vals) AS u (v)
         UNION ALL
         SELECT d.bk, d.stage, d.hb, d.v FROM d JOIN tg ON tg.bk = d.bk AND tg.stage = d.stage AND tg.hb = d.hb
         WHERE d.sgn = 1)
        EXCEPT ALL
        SELECT d.bk, d.stage, d.hb, d.v FROM d WHERE d.sgn = -1
    ), sorted AS MATERIALIZED (  -- each target bucket's values in order
        SELECT vals.bk, vals.stage, vals.hb, array_agg(vals.v ORDER BY vals.v) AS sv
        FROM vals GROUP BY vals.bk, vals.stage, vals.hb
    ), val AS (   -- the value at each rank needed
        SELECT tg.bk, tg.stage, r.r, so.sv[r.r - tg.before + 1] AS v
        FROM tg
        JOIN sorted so ON so.bk = tg.bk AND so.stage = tg.stage AND so.hb = tg.hb
        CROSS JOIN LATERAL unnest(tg.ranks) AS r (r)
        WHERE r.r >= tg.before AND r.r < tg.before + cardinality(so.sv)
    ), pos AS (   -- per bucket and stage: the position p(N-1) of each percentile and its two values
        SELECT t.bk, t.stage, t.total, p.i, p.p * (t.total - 1)::double precision AS x,
               min(val.v) FILTER (WHERE val.r = floor(p.p * (t.total - 1)::double precision)) AS lo,
               min(val.v) FILTER (WHERE val.r = ceil(p.p * (t.total - 1)::double precision)) AS hi,
               min(val.v) FILTER (WHERE val.r = t.total - 1) AS mx
        FROM (SELECT DISTINCT cum.bk, cum.stage, cum.total::bigint AS total FROM cum) t
        CROSS JOIN unnest(ARRAY[0.5, 0.9, 0.95]::double precision[]) WITH ORDINALITY AS p (p, i)
        JOIN val ON val.bk = t.bk AND val.stage = t.stage
        GROUP BY t.bk, t.stage, t.total, p.i, p.p
    ), pc AS (
        SELECT pos.bk, pos.stage, pos.total, pos.i, pos.mx,
               CASE WHEN floor(pos.x) = ceil(pos.x) THEN pos.lo
                    -- percentile_cont's own interpolation between the two values: the
                    -- same C arithmetic, without SQL float8's underflow/overflow errors
                    ELSE (SELECT percentile_cont(pos.x - floor(pos.x)) WITHIN GROUP (ORDER BY two.v)
                          FROM (VALUES (pos.lo), (pos.hi)) AS two (v)) END AS val
        FROM pos
    )
    SELECT NULLIF(pc.bk, 'infinity'), NULLIF(pc.bk, 'infinity')::timestamp AT TIME ZONE q.tz, 'all',
           (qi_hist_stages())[pc.stage], pc.total,
           min(pc.val) FILTER (WHERE pc.i = 1), min(pc.val) FILTER (WHERE pc.i = 2),
           min(pc.val) FILTER (WHERE pc.i = 3), min(pc.mx)
    FROM pc CROSS JOIN qi_settings q
    GROUP BY pc.bk, q.tz, pc.stage, pc.total
    ORDER BY 1, 3, 4
$$;
"""

OLD_STAGE_HISTOGRAM_HIST = r"""
-- qi_stage_histogram without filters, from the per-day histograms: a histogram bucket
-- whose lowest and highest possible values fall in the same bin counts as a whole (the
-- bin is monotonic in the value); the values of the others, and qi_hist_delta's, are
-- binned one by one. Same bins and counts as binning every study. Called by
-- qi_stage_histogram.
CREATE OR REPLACE FUNCTION qi_stage_histogram_hist(p_stage text, p_bin_s double precision, p_max_s double precision,
                                                   p_from timestamptz, p_to timestamptz)
RETURNS TABLE (bin_start double precision, bin_end double precision, n bigint)
LANGUAGE sql STABLE AS $$
    WITH b AS (
        SELECT qi_hist_bounds() AS th, array_position(qi_hist_stages(), p_stage)::smallint AS stage
    ), h AS (
        SELECT h.n, h.vals,
               CASE WHEN h.bucket >= 1 THEN b.th[h.bucket] END AS lo_b,
               CASE WHEN h.bucket >= 1 AND h.bucket < cardinality(b.th) THEN b.th[h.bucket + 1] END AS hi_b
        FROM b CROSS JOIN qi_hist_days(p_from, p_to) w
        JOIN qi_stage_hist h ON h.day BETWEEN w.d1 AND w.d2 AND h.stage = b.stage
    ), x AS (
        SELECT CASE WHEN h.lo_b >= p_max_s THEN p_max_s ELSE floor(h.lo_b / p_bin_s) * p_bin_s END AS lo, h.n::bigint AS n
        FROM h
        WHERE h.lo_b IS NOT NULL
          AND (h.lo_b >= p_max_s OR (h.hi_b IS NOT NULL AND h.hi_b < p_max_s
                                     AND floor(h.lo_b / p_bin_s) = floor(h.hi_b / p_bin_s)))
        UNION ALL
        SELECT CASE WHEN u.v >= p_max_s THEN p_max_s ELSE floor(u.v / p_bin_s) * p_bin_s END, 1
        FROM h CROSS JOIN LATERAL unnest(h.vals) AS u (v)
        WHERE NOT (h.lo_b IS NOT NULL
                   AND (h.lo_b >= p_max_s OR (h.hi_b IS NOT NULL AND h.hi_b < p_max_s
                                              AND floor(h.lo_b / p_bin_s) = floor(h.hi_b / p_bin_s))))
        UNION ALL
        SELECT CASE WHEN d.v >= p_max_s THEN p_max_s ELSE floor(d.v / p_bin_s) * p_bin_s END, d.sgn
        FROM b CROSS JOIN qi_hist_delta(p_from, p_to) d WHERE d.stage = b.stage
    )
    SELECT x.lo, CASE WHEN x.lo >= p_max_s THEN 'Infinity'::double precision ELSE x.lo + p_bin_s END, sum(x.n)::bigint
    FROM x
    GROUP BY x.lo
    HAVING sum(x.n) > 0
    ORDER BY x.lo
$$;
"""

OLD_SLA_COMPLIANCE_HIST = r"""
-- qi_sla_compliance without filters or groups: the same counts without reading every
-- study of the window. A study with a value is met when value <= threshold, else
-- breached, whatever the clock says; and a value implies the SLA applies (a turnaround
-- or to_destinations value needs a delivery, an AI round trip a send: qi_study_live.sql).
-- So met and breached-with-a-value are counted from the per-day histograms (a bucket
-- wholly at or below the threshold, or wholly above it, counts as a whole; the values of
-- the one bucket around the threshold are compared one by one; qi_hist_delta corrects
-- for dirty studies and partial days). Studies without a value whose SLA applies, the
-- only ones whose state depends on now(), are read from qi_study through partial indexes
-- (migration 0012) and keep qi_study's own states. Called by qi_sla_compliance.
CREATE OR REPLACE FUNCTION qi_sla_compliance_hist(p_from timestamptz, p_to timestamptz, p_grain text)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, metric text, threshold_s integer,
               n_met bigint, n_breached bigint, n_pending bigint, n_due bigint, compliance double precision)
LANGUAGE sql STABLE AS $$
    WITH thr AS (
        SELECT m.stage, m.metric, m.t
        FROM qi_settings q
        CROSS JOIN LATERAL (VALUES (3::smallint, 'ai_round_trip', q.sla_ai_round_trip_s),
                                   (5::smallint, 'to_destinations', q.sla_to_destinations_s),
                                   (6::smallint, 'turnaround', q.sla_turnaround_s)) AS m (stage, metric, t)
    ), valued AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, x.metric, sum(x.n) AS n, sum(x.met) AS met
        FROM (
            SELECT h.day, thr.metric, h.n::bigint AS n,
                   CASE WHEN h.bucket < cardinality(b.th) AND b.th[h.bucket + 1] <= thr.t THEN h.n
                        WHEN h.bucket >= 1 AND b.th[h.bucket] > thr.t THEN 0
                        ELSE (SELECT count(*) FROM unnest(h.vals) AS u (v) WHERE u.v <= thr.t) END::bigint AS met
            FROM (SELECT qi_hist_bounds() AS th) b
            CROSS JOIN qi_hist_days(p_from, p_to) w
            CROSS JOIN thr
            JOIN qi_stage_hist h ON h.stage = thr.stage AND h.day BETWEEN w.d1 AND w.d2
            UNION ALL
            SELECT d.day, thr.metric, d.sgn, CASE WHEN d.v <= thr.t THEN d.sgn ELSE 0 END
            FROM qi_hist_delta(p_from, p_to) d JOIN thr ON thr.stage = d.stage
        ) x
        GROUP BY 1, 2
    ), open AS (
        SELECT COALESCE(qi_bucket(p_grain, o.received_day, o.received_week, o.received_month), 'infinity') AS bk,
               o.metric, count(*) FILTER (WHERE o.state = 'breached') AS breached,
               count(*) FILTER (WHERE o.state = 'pending') AS pending
        FROM (
            SELECT s.received_day, s.received_week, s.received_month, 'turnaround' AS metric,
                   s.sla_turnaround AS state
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.delivery_expected AND s.turnaround_s IS NULL
            UNION ALL
            SELECT s.received_day, s.received_week, s.received_month, 'ai_round_trip', s.sla_ai_round_trip
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.ai_sent_at IS NOT NULL AND s.ai_round_trip_s IS NULL AND s.ai_result_at IS NULL
            UNION ALL
            SELECT s.received_day, s.received_week, s.received_month, 'to_destinations', s.sla_to_destinations
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.delivery_expected AND s.ready_at IS NOT NULL AND s.to_destinations_s IS NULL
        ) o
        GROUP BY 1, 2
    ), a AS (
        SELECT y.bk, y.metric, sum(y.met)::bigint AS met, sum(y.breached)::bigint AS breached,
               sum(y.pending)::bigint AS pending
        FROM (SELECT valued.bk, valued.metric, valued.met, valued.n - valued.met AS breached, 0 AS pending FROM valued
              UNION ALL
              SELECT open.bk, open.metric, 0, open.breached, open.pending FROM open) y
        GROUP BY 1, 2
    )
    SELECT NULLIF(a.bk, 'infinity'), NULLIF(a.bk, 'infinity')::timestamp AT TIME ZONE q.tz, 'all', a.metric,
           thr.t, a.met, a.breached, a.pending, a.met + a.breached,
           a.met::double precision / NULLIF(a.met + a.breached, 0)
    FROM a JOIN thr ON thr.metric = a.metric CROSS JOIN qi_settings q
    WHERE a.met + a.breached + a.pending > 0
    ORDER BY 1, 3, 4
$$;
"""

OLD_AI_OUTCOMES_HIST = r"""
-- qi_ai_outcomes without filters or groups (migration 0014): the same counts without
-- reading every study of the window. qi_study's ai_result_state is
--   on_time / late  a result was received (ai_result_at): late when the round trip is
--                   known and above AI_RESULT_TIMEOUT, else on time;
--   overdue / waiting  sent, no result yet: by the clock.
-- A round trip implies a send and a result (qi_study_live.sql), so late is the count of
-- ai_round_trip values above the timeout, from the per-day histograms (qi_stage_hist,
-- stage 3, as qi_sla_compliance_hist counts against a threshold), and on time is the
-- studies with a result less those. The studies routed / sent / with a result per day are
-- counted in qi_ai_day (+ qi_ai_delta). Only the sent studies without a result, whose
-- state depends on now(), are read from qi_study, through the partial index
-- qi_study_fact_open_rt_idx (migration 0012), and keep qi_study's own states.
-- Called by qi_ai_outcomes.
CREATE OR REPLACE FUNCTION qi_ai_outcomes_hist(p_from timestamptz, p_to timestamptz, p_grain text)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, ai_routed bigint, not_sent bigint,
               sent bigint, with_result bigint, on_time bigint, late bigint, overdue_missing bigint,
               waiting bigint, overdue bigint, overdue_rate double precision, no_result bigint,
               no_result_rate double precision)
LANGUAGE sql STABLE AS $$
    WITH flags AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk,
               sum(x.n) FILTER (WHERE x.ai_route) AS ai_routed,
               sum(x.n) FILTER (WHERE x.ai_route AND NOT x.ai_sent) AS not_sent,
               sum(x.n) FILTER (WHERE x.ai_sent) AS sent,
               sum(x.n) FILTER (WHERE x.ai_sent AND x.ai_result) AS with_result,
               sum(x.n) AS any_n
        FROM (
            SELECT a.day, a.ai_route, a.ai_sent, a.ai_result, a.n::bigint AS n
            FROM qi_hist_days(p_from, p_to) w JOIN qi_ai_day a ON a.day BETWEEN w.d1 AND w.d2
            UNION ALL
            SELECT d.day, d.ai_route, d.ai_sent, d.ai_result, d.sgn FROM qi_ai_delta(p_from, p_to) d
        ) x
        GROUP BY 1
    ), late AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, sum(x.late) AS late
        FROM (
            SELECT h.day,
                   CASE WHEN h.bucket < cardinality(b.th) AND b.th[h.bucket + 1] <= q.ai_result_timeout_s THEN 0
                        WHEN h.bucket >= 1 AND b.th[h.bucket] > q.ai_result_timeout_s THEN h.n
                        ELSE (SELECT count(*) FROM unnest(h.vals) AS u (v) WHERE u.v > q.ai_result_timeout_s)
                   END::bigint AS late
            FROM (SELECT qi_hist_bounds() AS th) b
            CROSS JOIN qi_settings q
            CROSS JOIN qi_hist_days(p_from, p_to) w
            JOIN qi_stage_hist h ON h.stage = 3 AND h.day BETWEEN w.d1 AND w.d2
            UNION ALL
            SELECT d.day, CASE WHEN d.v > q.ai_result_timeout_s THEN d.sgn ELSE 0 END
            FROM qi_hist_delta(p_from, p_to) d CROSS JOIN qi_settings q
            WHERE d.stage = 3
        ) x
        GROUP BY 1
    ), open AS (
        SELECT COALESCE(qi_bucket(p_grain, s.received_day, s.received_week, s.received_month), 'infinity') AS bk,
               count(*) FILTER (WHERE s.ai_result_state = 'overdue') AS overdue_missing,
               count(*) FILTER (WHERE s.ai_result_state = 'waiting') AS waiting
        FROM qi_study s
        WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
          AND s.ai_sent_at IS NOT NULL AND s.ai_round_trip_s IS NULL AND s.ai_result_at IS NULL
        GROUP BY 1
    ), a AS (
        SELECT f.bk, COALESCE(f.ai_routed, 0)::bigint AS ai_routed, COALESCE(f.not_sent, 0)::bigint AS not_sent,
               COALESCE(f.sent, 0)::bigint AS sent,
               (COALESCE(f.with_result, 0) - COALESCE(l.late, 0))::bigint AS on_time,
               COALESCE(l.late, 0)::bigint AS late,
               COALESCE(o.overdue_missing, 0) AS overdue_missing, COALESCE(o.waiting, 0) AS waiting
        FROM flags f
        LEFT JOIN late l ON l.bk = f.bk
        LEFT JOIN open o ON o.bk = f.bk
        WHERE f.any_n > 0
    )
    SELECT NULLIF(a.bk, 'infinity'), NULLIF(a.bk, 'infinity')::timestamp AT TIME ZONE q.tz, 'all', a.ai_routed,
           a.not_sent, a.sent, a.on_time + a.late, a.on_time, a.late, a.overdue_missing, a.waiting,
           a.late + a.overdue_missing, (a.late + a.overdue_missing)::double precision / NULLIF(a.sent, 0),
           a.overdue_missing + a.waiting, (a.overdue_missing + a.waiting)::double precision / NULLIF(a.sent, 0)
    FROM a CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
"""

DOWNGRADE = """
DROP FUNCTION qi_hist_counts(timestamptz, timestamptz, text, smallint[]);
DROP FUNCTION qi_hist_stage_ids(text[]);
DROP TABLE qi_stage_hist_month;
"""


def upgrade() -> None:
    op.execute(TABLES)
    schema_sql.load_in_migration(revision)
    # Triggers need the db/sql functions, which only the newest loading migration creates
    # (schema_sql.is_newest_loader): a database upgraded from before 0012 or 0014 gets
    # their triggers here; a later loading migration must likewise create them when missing.
    if schema_sql.is_newest_loader(revision):
        op.execute(STAGE_HIST_TRIGGERS)
        op.execute(DELIVERY_TRIGGERS)


def downgrade() -> None:
    op.execute(OLD_STAGE_HIST_FILL)
    op.execute(OLD_STAGE_STATS_HIST)
    op.execute(OLD_STAGE_HISTOGRAM_HIST)
    op.execute(OLD_SLA_COMPLIANCE_HIST)
    op.execute(OLD_AI_OUTCOMES_HIST)
    op.execute(DOWNGRADE)
