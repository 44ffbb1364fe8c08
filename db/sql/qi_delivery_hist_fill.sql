-- Recompute the per-day delivery histograms (qi_delivery_hist) and counts
-- (qi_delivery_cube) of the given local days in TZ from the cached rows qi_delivery_fact,
-- all days when p_days is NULL (migration 0014). A row's day is its study's first
-- reception in TZ, as qi_delivery's received_day. Per (day, destination, purpose, metric,
-- bucket of qi_hist_bucket): the count and the values of to_destination_s (metric 1) and
-- turnaround_s (metric 2); per (day, destination, purpose, outcome): the count. One
-- statement (the cube is written by a CTE), so the day's rows are read once. Then the
-- bucket counts of the months those days are in are summed again into
-- qi_delivery_hist_month, so that a year's ranks sum a dozen months' counts instead of
-- 365 days'. Called by qi_delivery_hist_sync.
CREATE OR REPLACE FUNCTION qi_delivery_hist_fill(p_days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    v_months date[] := (SELECT array_agg(DISTINCT date_trunc('month', d)::date) FROM unnest(p_days) AS d);
BEGIN
    IF p_days IS NULL THEN
        DELETE FROM qi_delivery_hist;
        DELETE FROM qi_delivery_cube;
    ELSE
        DELETE FROM qi_delivery_hist WHERE day = ANY (p_days);
        DELETE FROM qi_delivery_cube WHERE day = ANY (p_days);
    END IF;
    WITH r AS MATERIALIZED (
        SELECT (f.first_received_at AT TIME ZONE v_tz)::date AS day, f.destination, f.purpose, f.outcome,
               f.to_destination_s, f.turnaround_s
        FROM qi_delivery_fact f
        WHERE f.first_received_at IS NOT NULL AND p_days IS NULL
        UNION ALL
        SELECT d.day, f.destination, f.purpose, f.outcome, f.to_destination_s, f.turnaround_s
        FROM (SELECT DISTINCT unnest(p_days) AS day) d
        JOIN qi_delivery_fact f ON f.first_received_at >= d.day::timestamp AT TIME ZONE v_tz - interval '1 day'
                               AND f.first_received_at < (d.day + 1)::timestamp AT TIME ZONE v_tz + interval '1 day'
                               AND (f.first_received_at AT TIME ZONE v_tz)::date = d.day
        WHERE p_days IS NOT NULL
    ), cube AS (
        INSERT INTO qi_delivery_cube (day, destination, purpose, outcome, n)
        SELECT r.day, r.destination, r.purpose, r.outcome, count(*) FROM r GROUP BY 1, 2, 3, 4
    )
    INSERT INTO qi_delivery_hist (day, destination, purpose, metric, bucket, n, vals)
    SELECT r.day, r.destination, r.purpose, x.metric, qi_hist_bucket(x.v), count(*), array_agg(x.v)
    FROM r
    CROSS JOIN LATERAL (VALUES (1::smallint, r.to_destination_s), (2::smallint, r.turnaround_s)) AS x (metric, v)
    WHERE x.v IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5;
    IF p_days IS NULL THEN
        DELETE FROM qi_delivery_hist_month;
    ELSE
        DELETE FROM qi_delivery_hist_month WHERE month = ANY (v_months);
    END IF;
    INSERT INTO qi_delivery_hist_month (month, destination, purpose, metric, bucket, n)
    SELECT date_trunc('month', h.day)::date, h.destination, h.purpose, h.metric, h.bucket, sum(h.n)
    FROM qi_delivery_hist h
    WHERE p_days IS NULL
       OR (h.day >= (SELECT min(m) FROM unnest(v_months) AS m)
           AND h.day < (SELECT (max(m) + interval '1 month')::date FROM unnest(v_months) AS m)
           AND date_trunc('month', h.day)::date = ANY (v_months))
    GROUP BY 1, 2, 3, 4, 5;
END $$;
