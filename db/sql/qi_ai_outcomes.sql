-- AI results: rates over studies sent to the AI.
-- Without filters and groups over a long window (qi_hist_usable, qi_hist_long) the answer
-- comes from the per-day tables (qi_ai_outcomes_hist: the same numbers, reading only the
-- sent studies still without a result); otherwise every study of the window is read here.
-- Both conditions fold to constants, so only one branch runs.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_ai_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                          p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                          p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                          p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, ai_routed bigint, not_sent bigint,
               sent bigint, with_result bigint, on_time bigint, late bigint, overdue_missing bigint,
               waiting bigint, overdue bigint, overdue_rate double precision, no_result bigint,
               no_result_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_ai_outcomes_hist(p_from, p_to, p_grain)
    WHERE qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
      AND qi_hist_long(p_from, p_to)
    UNION ALL
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.ai_routed, a.not_sent, a.sent,
           a.on_time + a.late, a.on_time, a.late, a.overdue_missing, a.waiting,
           a.late + a.overdue_missing, (a.late + a.overdue_missing)::double precision / NULLIF(a.sent, 0),
           a.overdue_missing + a.waiting, (a.overdue_missing + a.waiting)::double precision / NULLIF(a.sent, 0)
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
               count(*) FILTER (WHERE s.ai_route)                               AS ai_routed,
               count(*) FILTER (WHERE s.ai_route AND s.ai_sent_at IS NULL)      AS not_sent,
               count(*) FILTER (WHERE s.ai_sent_at IS NOT NULL)                 AS sent,
               count(*) FILTER (WHERE s.ai_result_state = 'on_time')            AS on_time,
               count(*) FILTER (WHERE s.ai_result_state = 'late')               AS late,
               count(*) FILTER (WHERE s.ai_result_state = 'overdue')            AS overdue_missing,
               count(*) FILTER (WHERE s.ai_result_state = 'waiting')            AS waiting
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        WHERE s.ai_route OR s.ai_sent_at IS NOT NULL
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    WHERE NOT (qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
               AND qi_hist_long(p_from, p_to))
    ORDER BY 1, 3
$$;
