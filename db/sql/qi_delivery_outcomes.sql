-- Per destination (and purpose): outcomes of (study, destination) sends; cancelled sends
-- are left out of the denominator.
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
        SELECT qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) AS bucket,
               d.destination, d.purpose,
               count(*)                                          AS sends,
               count(*) FILTER (WHERE d.outcome = 'succeeded')   AS succeeded,
               count(*) FILTER (WHERE d.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE d.outcome = 'in_progress') AS in_progress
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE d.outcome <> 'cancelled'
        GROUP BY 1, 2, 3
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3, 4
$$;
