-- What qi_study_cube lacks for exact counts over [p_from, p_to), as signed single studies,
-- as qi_hist_delta does for the histograms: -1 for each cached row of a dirty study on a
-- whole day of the window, +1 for its live row, +1 for each study of qi_study on the
-- partial days at the window's ends. SECURITY DEFINER, as qi_hist_delta: see there.
-- Each part runs only when it can have rows (migration 0014): the dirty studies' when
-- qi_dirty has any, the partial days' when the window does not start and end at a
-- local midnight (core.qi's windows do); so neither live view is planned for nothing.
CREATE OR REPLACE FUNCTION qi_cube_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, hour integer, modality text, source_aet text, routed boolean, outcome text, sgn integer)
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
        SELECT (r.t AT TIME ZONE q.tz)::date, EXTRACT(hour FROM r.t AT TIME ZONE q.tz)::integer,
               r.modality, r.source_aet, r.routed, r.outcome, r.sgn
        FROM qi_hist_days(p_from, p_to) w
        CROSS JOIN qi_settings q
        CROSS JOIN LATERAL (
            SELECT f.first_received_at AS t, f.modality, f.source_aet, f.routed, f.outcome, -1 AS sgn
            FROM qi_study_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
            UNION ALL
            SELECT l.first_received_at, l.modality, l.source_aet, l.routed, l.outcome, 1
            FROM qi_study_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        ) r
        WHERE (r.t AT TIME ZONE q.tz)::date BETWEEN w.d1 AND w.d2;
    END IF;
    IF (p_from AT TIME ZONE v_tz)::date < v_d1
       OR ((p_to - interval '1 microsecond') AT TIME ZONE v_tz)::date > v_d2 THEN
        RETURN QUERY
        SELECT s.received_day, s.received_hour, s.modality, s.source_aet, s.routed, s.outcome, 1
        FROM qi_hist_days(p_from, p_to) w
        JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                       AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
        WHERE s.received_day NOT BETWEEN w.d1 AND w.d2;
    END IF;
END $$;
