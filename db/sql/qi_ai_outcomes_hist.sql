-- qi_ai_outcomes without filters or groups (migration 0014): the same counts without
-- reading every study of the window. qi_study's ai_result_state is
--   on_time / late  a result was received (ai_result_at): late when the round trip is
--                   known and above AI_RESULT_TIMEOUT, else on time;
--   overdue / waiting  sent, no result yet: by the clock.
-- A round trip implies a send and a result (qi_study_live.sql), so late is the count of
-- ai_round_trip values above the timeout, from the per-day histograms (qi_stage_hist,
-- stage 3, through qi_hist_counts: whole months from qi_stage_hist_month, migration 0015,
-- as qi_sla_compliance_hist counts against a threshold), and on time is the
-- studies with a result less those. The studies routed / sent / with a result per day are
-- counted in qi_ai_day (+ qi_ai_delta). Only the sent studies without a result, whose
-- state depends on now(), are read from qi_study, through the partial index
-- qi_study_fact_open_rt_idx (migration 0012), and keep qi_study's own states.
-- Called by qi_ai_outcomes.
CREATE OR REPLACE FUNCTION qi_ai_outcomes_hist(p_from timestamptz, p_to timestamptz, p_grain text)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, ai_routed bigint, not_sent bigint,
               sent bigint, with_result bigint, on_time bigint, late bigint, overdue_missing bigint,
               waiting bigint, overdue bigint, overdue_rate double precision, no_result bigint,
               no_result_rate double precision)
LANGUAGE sql STABLE AS $$
    WITH flags AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk,
               sum(x.n) FILTER (WHERE x.ai_route) AS ai_routed,
               sum(x.n) FILTER (WHERE x.ai_route AND NOT x.ai_sent) AS not_sent,
               sum(x.n) FILTER (WHERE x.ai_sent) AS sent,
               sum(x.n) FILTER (WHERE x.ai_sent AND x.ai_result) AS with_result,
               sum(x.n) AS any_n
        FROM (
            SELECT a.day, a.ai_route, a.ai_sent, a.ai_result, a.n::bigint AS n
            FROM qi_hist_days(p_from, p_to) w JOIN qi_ai_day a ON a.day BETWEEN w.d1 AND w.d2
            UNION ALL
            SELECT d.day, d.ai_route, d.ai_sent, d.ai_result, d.sgn FROM qi_ai_delta(p_from, p_to) d
        ) x
        GROUP BY 1
    ), late AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, sum(x.late) AS late
        FROM (
            SELECT h.day,
                   CASE WHEN h.hb < cardinality(b.th) AND b.th[h.hb + 1] <= q.ai_result_timeout_s THEN 0
                        WHEN h.hb >= 1 AND b.th[h.hb] > q.ai_result_timeout_s THEN h.n
                        WHEN h.vals IS NOT NULL
                        THEN (SELECT count(*) FROM unnest(h.vals) AS u (v) WHERE u.v > q.ai_result_timeout_s)
                        ELSE (SELECT count(*) FROM qi_stage_hist v CROSS JOIN LATERAL unnest(v.vals) AS u (v)
                              WHERE v.stage = 3 AND v.bucket = h.hb AND v.day BETWEEN h.day AND h.d_last
                                AND u.v > q.ai_result_timeout_s)
                   END::bigint AS late
            FROM (SELECT qi_hist_bounds() AS th) b
            CROSS JOIN qi_settings q
            CROSS JOIN qi_hist_counts(p_from, p_to, p_grain, ARRAY[3]::smallint[]) h
            UNION ALL
            SELECT d.day, CASE WHEN d.v > q.ai_result_timeout_s THEN d.sgn ELSE 0 END
            FROM qi_hist_delta(p_from, p_to) d CROSS JOIN qi_settings q
            WHERE d.stage = 3
        ) x
        GROUP BY 1
    ), open AS (
        SELECT COALESCE(qi_bucket(p_grain, s.received_day, s.received_week, s.received_month), 'infinity') AS bk,
               count(*) FILTER (WHERE s.ai_result_state = 'overdue') AS overdue_missing,
               count(*) FILTER (WHERE s.ai_result_state = 'waiting') AS waiting
        FROM qi_study s
        WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
          AND s.ai_sent_at IS NOT NULL AND s.ai_round_trip_s IS NULL AND s.ai_result_at IS NULL
        GROUP BY 1
    ), a AS (
        SELECT f.bk, COALESCE(f.ai_routed, 0)::bigint AS ai_routed, COALESCE(f.not_sent, 0)::bigint AS not_sent,
               COALESCE(f.sent, 0)::bigint AS sent,
               (COALESCE(f.with_result, 0) - COALESCE(l.late, 0))::bigint AS on_time,
               COALESCE(l.late, 0)::bigint AS late,
               COALESCE(o.overdue_missing, 0) AS overdue_missing, COALESCE(o.waiting, 0) AS waiting
        FROM flags f
        LEFT JOIN late l ON l.bk = f.bk
        LEFT JOIN open o ON o.bk = f.bk
        WHERE f.any_n > 0
    )
    SELECT NULLIF(a.bk, 'infinity'), NULLIF(a.bk, 'infinity')::timestamp AT TIME ZONE q.tz, 'all', a.ai_routed,
           a.not_sent, a.sent, a.on_time + a.late, a.on_time, a.late, a.overdue_missing, a.waiting,
           a.late + a.overdue_missing, (a.late + a.overdue_missing)::double precision / NULLIF(a.sent, 0),
           a.overdue_missing + a.waiting, (a.overdue_missing + a.waiting)::double precision / NULLIF(a.sent, 0)
    FROM a CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
