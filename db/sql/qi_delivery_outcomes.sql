-- Per destination (and purpose): outcomes of (study, destination) sends; cancelled sends
-- are left out of the denominator.
-- Without filters over a long window (qi_hist_usable, qi_hist_long) the counts come from
-- the per-day delivery counts (qi_delivery_cube_rows): the same numbers without reading
-- every delivery. Both conditions fold to constants, so only one branch runs.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_delivery_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
                                                p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                                                p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, purpose text, sends bigint,
               succeeded bigint, failed bigint, in_progress bigint, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.purpose, a.sends,
           a.succeeded, a.failed, a.in_progress, a.failed::double precision / NULLIF(a.sends, 0)
    FROM (
        SELECT qi_bucket(p_grain, c.day, date_trunc('week', c.day)::date, date_trunc('month', c.day)::date) AS bucket,
               c.destination, c.purpose,
               sum(c.n)::bigint                                                       AS sends,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'succeeded'), 0)::bigint   AS succeeded,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'failed'), 0)::bigint      AS failed,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'in_progress'), 0)::bigint AS in_progress
        FROM qi_delivery_cube_rows(p_from, p_to) c
        WHERE c.outcome <> 'cancelled'
          AND qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
          AND qi_hist_long(p_from, p_to)
        GROUP BY 1, 2, 3
        HAVING sum(c.n) > 0
        UNION ALL
        SELECT qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) AS bucket,
               d.destination, d.purpose,
               count(*)                                          AS sends,
               count(*) FILTER (WHERE d.outcome = 'succeeded')   AS succeeded,
               count(*) FILTER (WHERE d.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE d.outcome = 'in_progress') AS in_progress
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE d.outcome <> 'cancelled'
          AND NOT (qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
                   AND qi_hist_long(p_from, p_to))
        GROUP BY 1, 2, 3
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3, 4
$$;
