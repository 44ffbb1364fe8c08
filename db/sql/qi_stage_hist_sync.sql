-- Trigger function of qi_stage_hist_ins / _upd / _del / _trunc on qi_study_fact and
-- qi_stage_hist_tz on qi_settings (migration 0012): recomputes the histograms
-- (qi_stage_hist) and the per-day study counts (qi_study_cube) of the
-- local days whose cached rows a statement changed, or all of them when TZ changed or
-- the cache was truncated. The worker's writes never reach it: they only mark studies
-- dirty; the cache (and so the histograms) changes in qi_refresh / qi_rebuild.
CREATE OR REPLACE FUNCTION qi_stage_hist_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    days date[];
BEGIN
    IF TG_TABLE_NAME = 'qi_settings' OR TG_OP = 'TRUNCATE' THEN
        PERFORM qi_stage_hist_fill(NULL);
        PERFORM qi_study_cube_fill(NULL);
        PERFORM qi_ai_day_fill(NULL);
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM old_rows r;
    ELSE
        SELECT array_agg(DISTINCT (r.t AT TIME ZONE v_tz)::date) INTO days
        FROM (SELECT o.first_received_at AS t FROM old_rows o UNION ALL SELECT n.first_received_at FROM new_rows n) r;
    END IF;
    IF days IS NOT NULL THEN
        PERFORM qi_stage_hist_fill(days);
        PERFORM qi_study_cube_fill(days);
        PERFORM qi_ai_day_fill(days);
    END IF;
    RETURN NULL;
END $$;
