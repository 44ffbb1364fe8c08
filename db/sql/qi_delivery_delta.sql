-- What qi_delivery_hist and qi_delivery_cube lack for exact answers over [p_from, p_to),
-- as signed single rows of qi_delivery, as qi_hist_delta does for the studies: -1 for
-- each cached row of a dirty study on a whole local day of the window, +1 for each of its
-- live rows there (qi_delivery reads those live), +1 for each row of qi_delivery on the
-- partial days at the window's ends (none for core.qi's whole-day windows). SECURITY
-- DEFINER and plpgsql for the reasons given in qi_hist_delta.sql.
-- Each part runs only when it can have rows (migration 0014): the dirty studies' when
-- qi_dirty has any, the partial days' when the window does not start and end at a
-- local midnight (core.qi's windows do); so neither live view is planned for nothing.
CREATE OR REPLACE FUNCTION qi_delivery_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, destination text, purpose text, outcome text, to_destination_s double precision,
               turnaround_s double precision, sgn integer)
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
        SELECT r.day, r.destination, r.purpose, r.outcome, r.to_destination_s, r.turnaround_s, r.sgn
        FROM qi_hist_days(p_from, p_to) w
        CROSS JOIN qi_settings q
        CROSS JOIN LATERAL (
            SELECT (f.first_received_at AT TIME ZONE q.tz)::date AS day, f.destination, f.purpose, f.outcome,
                   f.to_destination_s, f.turnaround_s, -1 AS sgn
            FROM qi_delivery_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
            UNION ALL
            SELECT (l.first_received_at AT TIME ZONE q.tz)::date, l.destination, l.purpose, l.outcome,
                   l.to_destination_s, l.turnaround_s, 1
            FROM qi_delivery_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        ) r
        WHERE r.day BETWEEN w.d1 AND w.d2;
    END IF;
    IF (p_from AT TIME ZONE v_tz)::date < v_d1
       OR ((p_to - interval '1 microsecond') AT TIME ZONE v_tz)::date > v_d2 THEN
        RETURN QUERY
        SELECT d.received_day, d.destination, d.purpose, d.outcome, d.to_destination_s, d.turnaround_s, 1
        FROM qi_hist_days(p_from, p_to) w
        JOIN qi_delivery d ON d.first_received_at >= p_from AND d.first_received_at < p_to
                          AND (d.first_received_at < p_from + interval '26 hours' OR d.first_received_at >= p_to - interval '26 hours')
        WHERE d.received_day NOT BETWEEN w.d1 AND w.d2;
    END IF;
END $$;
