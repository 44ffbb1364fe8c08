-- Send attempts by the time they finished: failed / finished attempts, per destination
-- (p_by_destination false: one row per bucket, destination 'all').
-- Without filters over a long window (qi_hist_usable, qi_hist_long) the whole local days
-- are counted from qi_attempt_day (migration 0014: attempts per day, destination and
-- outcome, kept by the events' triggers) and only the partial days at the window's ends
-- are read from qi_attempt: the same counts. Both conditions fold to constants, so only
-- one branch runs.
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
        SELECT qi_bucket(p_grain, c.day, date_trunc('week', c.day)::date, date_trunc('month', c.day)::date) AS bucket,
               CASE WHEN p_by_destination THEN c.destination ELSE 'all' END AS destination,
               sum(c.n)::bigint                                                     AS attempts,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome IN ('failed', 'dead')), 0)::bigint AS failed,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'failed'), 0)::bigint    AS retried,
               COALESCE(sum(c.n) FILTER (WHERE c.outcome = 'dead'), 0)::bigint      AS dead
        FROM (
            SELECT ad.day, ad.destination, ad.outcome, ad.n
            FROM qi_hist_days(p_from, p_to) w
            JOIN qi_attempt_day ad ON ad.day BETWEEN w.d1 AND w.d2
            UNION ALL
            SELECT t.at_day, t.destination, t.outcome, 1
            FROM qi_hist_days(p_from, p_to) w
            JOIN qi_attempt t ON t.at >= p_from AND t.at < p_to
                             AND (t.at < p_from + interval '26 hours' OR t.at >= p_to - interval '26 hours')
            WHERE t.at_day NOT BETWEEN w.d1 AND w.d2
        ) c
        WHERE qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
          AND qi_hist_long(p_from, p_to)
        GROUP BY 1, 2
        HAVING sum(c.n) > 0
        UNION ALL
        SELECT qi_bucket(p_grain, t.at_day, t.at_week, t.at_month) AS bucket,
               CASE WHEN p_by_destination THEN t.destination ELSE 'all' END AS destination,
               count(*)                                    AS attempts,
               count(*) FILTER (WHERE t.failed)            AS failed,
               count(*) FILTER (WHERE t.outcome = 'failed') AS retried,
               count(*) FILTER (WHERE t.outcome = 'dead')   AS dead
        FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
        WHERE NOT (qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
                   AND qi_hist_long(p_from, p_to))
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
