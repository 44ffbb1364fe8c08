-- What qi_stage_hist lacks for an exact answer over [p_from, p_to), as signed single
-- values (day, stage, bucket, sgn, v): the histograms hold every cached row, dirty
-- studies' stale ones included, and only whole local days. So: -1 for each cached value
-- of a dirty study on a whole day of the window, +1 for each live value of a dirty study
-- on such a day (qi_study reads those live too), and +1 for each value of qi_study on the
-- partial days at the window's ends (none when the window is whole days, as core.qi's).
-- Small while qi_refresh runs (a few dirty studies). SECURITY DEFINER: it reads the
-- cache and the live definition, which grafana_ro may not read; grafana_ro may call the
-- aggregates (and read the per-day tables, which hold counts and durations only).
-- plpgsql, so that its query is planned with the window's values (custom plans, as
-- core.qi asks): a SECURITY DEFINER SQL function is planned for any window. A partial day lies within 26 hours
-- of the window's start or end (no local day is longer than 25 hours): only those
-- ranges of qi_study are read, and the local day decides.
-- Each part runs only when it can have rows (migration 0014): the dirty studies' when
-- qi_dirty has any, the partial days' when the window does not start and end at a
-- local midnight (core.qi's windows do); so neither live view is planned for nothing.
CREATE OR REPLACE FUNCTION qi_hist_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, stage smallint, hb integer, sgn integer, v double precision)
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
        SELECT r.day, x.stage, qi_hist_bucket(x.v), r.sgn, x.v
        FROM qi_hist_days(p_from, p_to) w
        CROSS JOIN qi_settings q
        CROSS JOIN LATERAL (
            SELECT (f.first_received_at AT TIME ZONE q.tz)::date AS day, -1 AS sgn, f.wait_stable_s, f.to_ai_s,
                   f.ai_round_trip_s, f.result_settle_s, f.to_destinations_s, f.turnaround_s
            FROM qi_study_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
            UNION ALL
            SELECT (l.first_received_at AT TIME ZONE q.tz)::date, 1, l.wait_stable_s, l.to_ai_s,
                   l.ai_round_trip_s, l.result_settle_s, l.to_destinations_s, l.turnaround_s
            FROM qi_study_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        ) r
        CROSS JOIN LATERAL (VALUES (1::smallint, r.wait_stable_s), (2::smallint, r.to_ai_s),
                                   (3::smallint, r.ai_round_trip_s), (4::smallint, r.result_settle_s),
                                   (5::smallint, r.to_destinations_s), (6::smallint, r.turnaround_s)) AS x (stage, v)
        WHERE r.day BETWEEN w.d1 AND w.d2 AND x.v IS NOT NULL;
    END IF;
    IF (p_from AT TIME ZONE v_tz)::date < v_d1
       OR ((p_to - interval '1 microsecond') AT TIME ZONE v_tz)::date > v_d2 THEN
        RETURN QUERY
        SELECT s.received_day, x.stage, qi_hist_bucket(x.v), 1, x.v
        FROM qi_hist_days(p_from, p_to) w
        JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                       AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
        CROSS JOIN LATERAL (VALUES (1::smallint, s.wait_stable_s), (2::smallint, s.to_ai_s),
                                   (3::smallint, s.ai_round_trip_s), (4::smallint, s.result_settle_s),
                                   (5::smallint, s.to_destinations_s), (6::smallint, s.turnaround_s)) AS x (stage, v)
        WHERE s.received_day NOT BETWEEN w.d1 AND w.d2 AND x.v IS NOT NULL;
    END IF;
END $$;
