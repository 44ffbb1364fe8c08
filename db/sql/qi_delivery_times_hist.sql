-- qi_delivery_times without filters, from the per-day delivery histograms and counts
-- (qi_delivery_hist, qi_delivery_cube; migration 0014): the same numbers, percentile_cont's
-- exactly, without reading every delivery of the window. The method of
-- qi_stage_stats_hist.sql (read it first), keyed by destination, purpose and metric
-- (1 = to_destination_s, 2 = turnaround_s) instead of stage: the bucket counts summed over
-- the window's days (plus qi_delivery_delta) give each bucket's first rank; only the
-- buckets holding a rank percentile_cont needs are sorted. n is the completed deliveries
-- (outcome 'succeeded' is exactly completed_at known), counted in qi_delivery_cube.
-- With buckets of whole months or the whole window (p_grain 'month' or 'all'), the counts
-- of the calendar months wholly inside the window come from qi_delivery_hist_month and only
-- the days before and after them from qi_delivery_hist. The values of a target bucket are
-- checked against the delta's stale ones (EXCEPT ALL) only where the delta has some.
-- Called by qi_delivery_times.
CREATE OR REPLACE FUNCTION qi_delivery_times_hist(p_from timestamptz, p_to timestamptz, p_grain text)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, purpose text, n bigint,
               to_destination_p50 double precision, to_destination_p90 double precision,
               to_destination_p95 double precision, to_destination_max double precision,
               turnaround_p50 double precision, turnaround_p90 double precision,
               turnaround_p95 double precision, turnaround_max double precision)
LANGUAGE sql STABLE AS $$
    WITH w AS (
        SELECT * FROM qi_hist_days(p_from, p_to)
    ), r AS (     -- the whole months [mlo, mhi) inside [d1, d2] that month rows count, if any
        SELECT w.d1, w.d2, CASE WHEN m.lo < m.hi THEN m.lo END AS mlo, CASE WHEN m.lo < m.hi THEN m.hi END AS mhi
        FROM w
        CROSS JOIN LATERAL (
            SELECT CASE WHEN p_grain IN ('all', 'month')
                        THEN (date_trunc('month', w.d1 - 1) + interval '1 month')::date END AS lo,
                   CASE WHEN p_grain IN ('all', 'month') THEN date_trunc('month', w.d2 + 1)::date END AS hi
        ) m
    ), dl AS MATERIALIZED (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, x.destination, x.purpose, x.outcome, x.to_destination_s, x.turnaround_s, x.sgn
        FROM qi_delivery_delta(p_from, p_to) x
    ), d AS MATERIALIZED (   -- the delta's single values, per metric
        SELECT dl.bk, dl.destination, dl.purpose, m.metric, qi_hist_bucket(m.v) AS hb, dl.sgn, m.v
        FROM dl CROSS JOIN LATERAL (VALUES (1::smallint, dl.to_destination_s), (2::smallint, dl.turnaround_s)) AS m (metric, v)
        WHERE m.v IS NOT NULL
    ), cnt AS (   -- completed deliveries per bucket, destination and purpose
        SELECT y.bk, y.destination, y.purpose, sum(y.n)::bigint AS n
        FROM (
            SELECT COALESCE(qi_bucket(p_grain, c.day, date_trunc('week', c.day)::date,
                                      date_trunc('month', c.day)::date), 'infinity') AS bk,
                   c.destination, c.purpose, c.n::bigint AS n
            FROM w JOIN qi_delivery_cube c ON c.day BETWEEN w.d1 AND w.d2
            WHERE c.outcome = 'succeeded'
            UNION ALL
            SELECT dl.bk, dl.destination, dl.purpose, dl.sgn FROM dl WHERE dl.outcome = 'succeeded'
        ) y
        GROUP BY 1, 2, 3
        HAVING sum(y.n) > 0
    ), c AS (
        SELECT y.bk, y.destination, y.purpose, y.metric, y.hb, sum(y.n)::bigint AS n
        FROM (
            SELECT COALESCE(qi_bucket(p_grain, h.day, date_trunc('week', h.day)::date,
                                      date_trunc('month', h.day)::date), 'infinity') AS bk,
                   h.destination, h.purpose, h.metric, h.bucket AS hb, h.n::bigint AS n
            FROM r JOIN qi_delivery_hist h ON h.day >= r.d1 AND h.day <= LEAST(r.d2, r.mlo - 1)
            UNION ALL
            SELECT COALESCE(qi_bucket(p_grain, h.day, date_trunc('week', h.day)::date,
                                      date_trunc('month', h.day)::date), 'infinity'),
                   h.destination, h.purpose, h.metric, h.bucket, h.n
            FROM r JOIN qi_delivery_hist h ON h.day >= r.mhi AND h.day <= r.d2
            UNION ALL
            SELECT COALESCE(qi_bucket(p_grain, hm.month, date_trunc('week', hm.month)::date, hm.month), 'infinity'),
                   hm.destination, hm.purpose, hm.metric, hm.bucket, hm.n
            FROM r JOIN qi_delivery_hist_month hm ON hm.month >= r.mlo AND hm.month < r.mhi
            UNION ALL
            SELECT d.bk, d.destination, d.purpose, d.metric, d.hb, d.sgn FROM d
        ) y
        GROUP BY 1, 2, 3, 4, 5
        HAVING sum(y.n) <> 0
    ), cum AS (   -- each bucket's first rank, and the series' count
        SELECT c.*,
               sum(c.n) OVER (PARTITION BY c.bk, c.destination, c.purpose, c.metric ORDER BY c.hb) - c.n AS before,
               sum(c.n) OVER (PARTITION BY c.bk, c.destination, c.purpose, c.metric) AS total
        FROM c
    ), tg AS MATERIALIZED (  -- the histogram buckets holding a rank needed
        SELECT cum.bk, cum.destination, cum.purpose, cum.metric, cum.hb, cum.before::bigint AS before, r.ranks
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
    ), raw AS (   -- their values: the histograms' plus the delta's
        SELECT tg.bk, tg.destination, tg.purpose, tg.metric, tg.hb, u.v
        FROM tg CROSS JOIN w
        JOIN qi_delivery_hist h ON h.destination = tg.destination AND h.purpose = tg.purpose
         AND h.metric = tg.metric AND h.bucket = tg.hb
         AND h.day BETWEEN GREATEST(w.d1, CASE WHEN p_grain IN ('day', 'week', 'month') THEN tg.bk END)
                       AND LEAST(w.d2, CASE p_grain WHEN 'day' THEN tg.bk WHEN 'week' THEN tg.bk + 6
                                                    WHEN 'month' THEN (tg.bk + interval '1 month')::date - 1 END)
        CROSS JOIN LATERAL unnest(h.vals) AS u (v)
        UNION ALL
        SELECT d.bk, d.destination, d.purpose, d.metric, d.hb, d.v
        FROM d JOIN tg ON tg.bk = d.bk AND tg.destination = d.destination AND tg.purpose = d.purpose
                      AND tg.metric = d.metric AND tg.hb = d.hb
        WHERE d.sgn = 1
    ), stale AS (  -- the target buckets the delta removes values from (few or none)
        SELECT DISTINCT d.bk, d.destination, d.purpose, d.metric, d.hb FROM d WHERE d.sgn = -1
    ), vals AS (  -- less the delta's stale values (without any, the raw values as they are)
        SELECT raw.* FROM raw WHERE NOT EXISTS (SELECT 1 FROM stale)
        UNION ALL
        SELECT raw.* FROM raw
        WHERE EXISTS (SELECT 1 FROM stale)
          AND NOT EXISTS (SELECT 1 FROM stale x WHERE x.bk = raw.bk AND x.destination = raw.destination
                          AND x.purpose = raw.purpose AND x.metric = raw.metric AND x.hb = raw.hb)
        UNION ALL
        (SELECT raw.* FROM raw JOIN stale x ON x.bk = raw.bk AND x.destination = raw.destination
                AND x.purpose = raw.purpose AND x.metric = raw.metric AND x.hb = raw.hb
         EXCEPT ALL
         SELECT d.bk, d.destination, d.purpose, d.metric, d.hb, d.v FROM d WHERE d.sgn = -1)
    ), sorted AS MATERIALIZED (  -- each target bucket's values in order
        SELECT vals.bk, vals.destination, vals.purpose, vals.metric, vals.hb, array_agg(vals.v ORDER BY vals.v) AS sv
        FROM vals GROUP BY 1, 2, 3, 4, 5
    ), val AS (   -- the value at each rank needed
        SELECT tg.bk, tg.destination, tg.purpose, tg.metric, r.r, so.sv[r.r - tg.before + 1] AS v
        FROM tg
        JOIN sorted so ON so.bk = tg.bk AND so.destination = tg.destination AND so.purpose = tg.purpose
                      AND so.metric = tg.metric AND so.hb = tg.hb
        CROSS JOIN LATERAL unnest(tg.ranks) AS r (r)
        WHERE r.r >= tg.before AND r.r < tg.before + cardinality(so.sv)
    ), pos AS (   -- per series: the position p(N-1) of each percentile and its two values
        SELECT t.bk, t.destination, t.purpose, t.metric, p.i, p.p * (t.total - 1)::double precision AS x,
               min(val.v) FILTER (WHERE val.r = floor(p.p * (t.total - 1)::double precision)) AS lo,
               min(val.v) FILTER (WHERE val.r = ceil(p.p * (t.total - 1)::double precision)) AS hi,
               min(val.v) FILTER (WHERE val.r = t.total - 1) AS mx
        FROM (SELECT DISTINCT cum.bk, cum.destination, cum.purpose, cum.metric, cum.total::bigint AS total FROM cum) t
        CROSS JOIN unnest(ARRAY[0.5, 0.9, 0.95]::double precision[]) WITH ORDINALITY AS p (p, i)
        JOIN val ON val.bk = t.bk AND val.destination = t.destination AND val.purpose = t.purpose
                AND val.metric = t.metric
        GROUP BY t.bk, t.destination, t.purpose, t.metric, t.total, p.i, p.p
    ), pc AS (
        SELECT pos.bk, pos.destination, pos.purpose, pos.metric, pos.i, pos.mx,
               CASE WHEN floor(pos.x) = ceil(pos.x) THEN pos.lo
                    -- percentile_cont's own interpolation, as in qi_stage_stats_hist
                    ELSE (SELECT percentile_cont(pos.x - floor(pos.x)) WITHIN GROUP (ORDER BY two.v)
                          FROM (VALUES (pos.lo), (pos.hi)) AS two (v)) END AS val
        FROM pos
    )
    SELECT NULLIF(k.bk, 'infinity'), NULLIF(k.bk, 'infinity')::timestamp AT TIME ZONE q.tz, k.destination,
           k.purpose, k.n,
           min(pc.val) FILTER (WHERE pc.metric = 1 AND pc.i = 1), min(pc.val) FILTER (WHERE pc.metric = 1 AND pc.i = 2),
           min(pc.val) FILTER (WHERE pc.metric = 1 AND pc.i = 3), min(pc.mx) FILTER (WHERE pc.metric = 1),
           min(pc.val) FILTER (WHERE pc.metric = 2 AND pc.i = 1), min(pc.val) FILTER (WHERE pc.metric = 2 AND pc.i = 2),
           min(pc.val) FILTER (WHERE pc.metric = 2 AND pc.i = 3), min(pc.mx) FILTER (WHERE pc.metric = 2)
    FROM cnt k
    CROSS JOIN qi_settings q
    LEFT JOIN pc ON pc.bk = k.bk AND pc.destination = k.destination AND pc.purpose = k.purpose
    GROUP BY k.bk, q.tz, k.destination, k.purpose, k.n
    ORDER BY 1, 3, 4
$$;
