-- Per destination (and purpose): time from ready (stable for the AI) and from first
-- reception until that destination's required sends all succeeded.
-- Without filters, over a long window (qi_hist_usable, qi_hist_long) and per month or for
-- the whole window (the pages' call), the answer comes from the per-day delivery
-- histograms (qi_delivery_times_hist: the same numbers without reading every delivery);
-- otherwise every delivery of the window is read here (per day or week the few values of
-- each bucket are read as fast as the histograms). The conditions fold to constants, so
-- only one branch runs.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_delivery_times(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
                                             p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                                             p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, purpose text, n bigint,
               to_destination_p50 double precision, to_destination_p90 double precision,
               to_destination_p95 double precision, to_destination_max double precision,
               turnaround_p50 double precision, turnaround_p90 double precision,
               turnaround_p95 double precision, turnaround_max double precision)
LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_delivery_times_hist(p_from, p_to, p_grain)
    WHERE qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
      AND qi_hist_long(p_from, p_to) AND p_grain IN ('all', 'month')
    UNION ALL
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.purpose, a.n,
           a.td[1], a.td[2], a.td[3], a.td_max, a.ta[1], a.ta[2], a.ta[3], a.ta_max
    FROM (
        SELECT qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) AS bucket,
               d.destination, d.purpose,
               count(*)                AS n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.to_destination_s) AS td,
               max(d.to_destination_s) AS td_max,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.turnaround_s) AS ta,
               max(d.turnaround_s)     AS ta_max
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE d.completed_at IS NOT NULL
        GROUP BY 1, 2, 3
    ) a
    CROSS JOIN qi_settings q
    WHERE NOT (qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
               AND qi_hist_long(p_from, p_to) AND p_grain IN ('all', 'month'))
    ORDER BY 1, 3, 4
$$;
