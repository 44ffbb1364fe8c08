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
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
