-- What qi_ai_day lacks for exact counts over [p_from, p_to), as signed single studies
-- (qi_cube_delta's method): -1 for each cached row of a dirty study on a whole local day
-- of the window, +1 for its live row, +1 for each study of qi_study on the partial days
-- at the window's ends. Only studies qi_ai_outcomes counts (AI route or sent).
-- SECURITY DEFINER and plpgsql for the reasons given in qi_hist_delta.sql.
-- Each part runs only when it can have rows (migration 0014): the dirty studies' when
-- qi_dirty has any, the partial days' when the window does not start and end at a
-- local midnight (core.qi's windows do); so neither live view is planned for nothing.
CREATE OR REPLACE FUNCTION qi_ai_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, ai_route boolean, ai_sent boolean, ai_result boolean, sgn integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    v_d1 date;
    v_d2 date;
BEGIN
    SELECT h.d1, h.d2 INTO v_d1, v_d2 FROM qi_hist_days(p_from, p_to) h;
    IF EXISTS (SELECT 1 FROM qi_dirty) THEN
        RETURN QUERY
        SELECT (r.t AT TIME ZONE q.tz)::date, r.ai_route, r.ai_sent, r.ai_result, r.sgn
        FROM qi_hist_days(p_from, p_to) w
        CROSS JOIN qi_settings q
        CROSS JOIN LATERAL (
            SELECT f.first_received_at AS t, f.ai_route, f.ai_sent_at IS NOT NULL AS ai_sent,
                   f.ai_result_at IS NOT NULL AS ai_result, -1 AS sgn
            FROM qi_study_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
            UNION ALL
            SELECT l.first_received_at, l.ai_route, l.ai_sent_at IS NOT NULL, l.ai_result_at IS NOT NULL, 1
            FROM qi_study_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        ) r
        WHERE (r.t AT TIME ZONE q.tz)::date BETWEEN w.d1 AND w.d2 AND (r.ai_route OR r.ai_sent);
    END IF;
    IF (p_from AT TIME ZONE v_tz)::date < v_d1
       OR ((p_to - interval '1 microsecond') AT TIME ZONE v_tz)::date > v_d2 THEN
        RETURN QUERY
        SELECT s.received_day, s.ai_route, s.ai_sent_at IS NOT NULL, s.ai_result_at IS NOT NULL, 1
        FROM qi_hist_days(p_from, p_to) w
        JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                       AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
        WHERE s.received_day NOT BETWEEN w.d1 AND w.d2 AND (s.ai_route OR s.ai_sent_at IS NOT NULL);
    END IF;
END $$;
