-- What qi_study_cube lacks for exact counts over [p_from, p_to), as signed single studies,
-- as qi_hist_delta does for the histograms: -1 for each cached row of a dirty study on a
-- whole day of the window, +1 for its live row, +1 for each study of qi_study on the
-- partial days at the window's ends. SECURITY DEFINER, as qi_hist_delta: see there.
CREATE OR REPLACE FUNCTION qi_cube_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, hour integer, modality text, source_aet text, routed boolean, outcome text, sgn integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
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
    WHERE (r.t AT TIME ZONE q.tz)::date BETWEEN w.d1 AND w.d2
    UNION ALL
    SELECT s.received_day, s.received_hour, s.modality, s.source_aet, s.routed, s.outcome, 1
    FROM qi_hist_days(p_from, p_to) w
    JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                   AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
    WHERE s.received_day NOT BETWEEN w.d1 AND w.d2;
END $$;
