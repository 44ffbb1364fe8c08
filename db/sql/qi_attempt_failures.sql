-- Send attempts by the time they finished: failed / finished attempts, per destination
-- (p_by_destination false: one row per bucket, destination 'all').
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_attempt_failures(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                               p_by_destination boolean DEFAULT true, p_modality text[] DEFAULT NULL,
                                               p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                               p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, attempts bigint, failed bigint,
               retried bigint, dead bigint, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.attempts, a.failed,
           a.retried, a.dead, a.failed::double precision / NULLIF(a.attempts, 0)
    FROM (
        SELECT qi_bucket(p_grain, t.at_day, t.at_week, t.at_month) AS bucket,
               CASE WHEN p_by_destination THEN t.destination ELSE 'all' END AS destination,
               count(*)                                    AS attempts,
               count(*) FILTER (WHERE t.failed)            AS failed,
               count(*) FILTER (WHERE t.outcome = 'failed') AS retried,
               count(*) FILTER (WHERE t.outcome = 'dead')   AS dead
        FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
