-- Study outcomes; rates are over routed studies (unrouted ones are counted, not rated).
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_study_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                             p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                             p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                             p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, received bigint, routed bigint,
               unrouted bigint, delivered bigint, failed bigint, in_progress bigint, no_delivery bigint,
               delivered_rate double precision, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.received, a.routed, a.unrouted,
           a.delivered, a.failed, a.in_progress, a.no_delivery,
           a.delivered::double precision / NULLIF(a.routed, 0),
           a.failed::double precision / NULLIF(a.routed, 0)
    FROM (
        -- without filters and groups: from the per-day counts (qi_cube_rows), same numbers
        SELECT qi_bucket(p_grain, c.day, date_trunc('week', c.day)::date, date_trunc('month', c.day)::date) AS bucket,
               'all' AS grp,
               sum(c.n)::bigint                                                       AS received,
               COALESCE(sum(c.n) FILTER (WHERE c.routed), 0)::bigint                  AS routed,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'unrouted'), 0)::bigint    AS unrouted,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'delivered'), 0)::bigint   AS delivered,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'failed'), 0)::bigint      AS failed,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'in_progress'), 0)::bigint AS in_progress,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'no_delivery'), 0)::bigint AS no_delivery
        FROM qi_cube_rows(p_from, p_to) c
        WHERE qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
        GROUP BY 1, 2
        HAVING sum(c.n) > 0
        UNION ALL
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
               count(*)                                          AS received,
               count(*) FILTER (WHERE s.routed)                  AS routed,
               count(*) FILTER (WHERE s.outcome = 'unrouted')    AS unrouted,
               count(*) FILTER (WHERE s.outcome = 'delivered')   AS delivered,
               count(*) FILTER (WHERE s.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE s.outcome = 'in_progress') AS in_progress,
               count(*) FILTER (WHERE s.outcome = 'no_delivery') AS no_delivery
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        WHERE NOT qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
