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
-- value at rank N - 1. The counts come from qi_hist_counts (whole calendar months from
-- qi_stage_hist_month when the buckets are months or the whole window, migration 0015),
-- for the asked stages only (qi_hist_stage_ids, a constant in core.qi's custom plans).
-- Called by qi_stage_stats.
CREATE OR REPLACE FUNCTION qi_stage_stats_hist(p_from timestamptz, p_to timestamptz, p_grain text,
                                               p_stages text[])
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, stage text, n bigint,
               p50 double precision, p90 double precision, p95 double precision, max double precision)
LANGUAGE sql STABLE AS $$
    WITH w AS MATERIALIZED (  -- once, so that the bounds of vals' day range are known values
        SELECT * FROM qi_hist_days(p_from, p_to)
    ), d AS MATERIALIZED (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, x.stage, x.hb, x.sgn, x.v
        FROM qi_hist_delta(p_from, p_to) x WHERE x.stage = ANY (qi_hist_stage_ids(p_stages))
    ), c AS (
        SELECT y.bk, y.stage, y.hb, sum(y.n)::bigint AS n
        FROM (
            SELECT COALESCE(qi_bucket(p_grain, h.day, date_trunc('week', h.day)::date,
                                      date_trunc('month', h.day)::date), 'infinity') AS bk,
                   h.stage, h.hb, h.n
            FROM qi_hist_counts(p_from, p_to, p_grain, qi_hist_stage_ids(p_stages)) h
            UNION ALL
            SELECT d.bk, d.stage, d.hb, d.sgn FROM d
        ) y
        GROUP BY 1, 2, 3
        HAVING sum(y.n) <> 0
    ), cum AS (   -- each bucket's first rank, and the series' count (summed as float8: whole
                  -- numbers below 2^53 exactly, without numeric's per-row arithmetic)
        SELECT c.bk, c.stage, c.hb, c.n,
               sum(c.n::double precision) OVER (PARTITION BY c.bk, c.stage ORDER BY c.hb) - c.n AS before,
               sum(c.n::double precision) OVER (PARTITION BY c.bk, c.stage) AS total
        FROM c
    ), tg AS MATERIALIZED (  -- the histogram buckets holding a rank needed (floor and ceil of p(N-1), N-1)
        SELECT cum.bk, cum.stage, cum.hb, cum.before::bigint AS before, r.ranks
        FROM cum
        CROSS JOIN LATERAL (
            SELECT ARRAY[floor(0.5::double precision * (cum.total - 1)), ceil(0.5::double precision * (cum.total - 1)),
                         floor(0.9::double precision * (cum.total - 1)), ceil(0.9::double precision * (cum.total - 1)),
                         floor(0.95::double precision * (cum.total - 1)),
                         ceil(0.95::double precision * (cum.total - 1)), cum.total - 1]::bigint[] AS ranks) r
        WHERE int8range(cum.before::bigint, (cum.before + cum.n)::bigint) @> ANY (r.ranks)
    ), vals AS (  -- their values: the histograms' plus the delta's, less the delta's stale ones
        (SELECT tg.bk, tg.stage, tg.hb, u.v
         FROM tg CROSS JOIN w
         CROSS JOIN LATERAL (  -- through the index, target by target (OFFSET 0 keeps it so: a hash
                               -- join of every stage's rows with thousands of day targets took seconds)
             SELECT h.vals FROM qi_stage_hist h
             WHERE h.stage = tg.stage AND h.bucket = tg.hb
               AND h.day BETWEEN GREATEST(w.d1, CASE WHEN p_grain IN ('day', 'week', 'month') THEN tg.bk END)
                             AND LEAST(w.d2, CASE p_grain WHEN 'day' THEN tg.bk WHEN 'week' THEN tg.bk + 6
                                                          WHEN 'month' THEN (tg.bk + interval '1 month')::date - 1 END)
             OFFSET 0) h
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
