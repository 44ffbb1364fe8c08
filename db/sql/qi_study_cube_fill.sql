-- Recompute the per-day study counts (qi_study_cube) of the given local days in TZ from
-- the cached rows qi_study_fact, all days when p_days is NULL: studies per local day and
-- hour, modality, source, routed and outcome (none of which depends on the clock or a
-- threshold). Called with qi_stage_hist_fill by qi_stage_hist_sync.
CREATE OR REPLACE FUNCTION qi_study_cube_fill(p_days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
BEGIN
    IF p_days IS NULL THEN
        DELETE FROM qi_study_cube;
        INSERT INTO qi_study_cube (day, hour, modality, source_aet, routed, outcome, n)
        SELECT (f.first_received_at AT TIME ZONE v_tz)::date, EXTRACT(hour FROM f.first_received_at AT TIME ZONE v_tz),
               f.modality, f.source_aet, f.routed, f.outcome, count(*)
        FROM qi_study_fact f
        WHERE f.first_received_at IS NOT NULL
        GROUP BY 1, 2, 3, 4, 5, 6;
    ELSE
        DELETE FROM qi_study_cube WHERE day = ANY (p_days);
        INSERT INTO qi_study_cube (day, hour, modality, source_aet, routed, outcome, n)
        SELECT d.day, EXTRACT(hour FROM f.first_received_at AT TIME ZONE v_tz),
               f.modality, f.source_aet, f.routed, f.outcome, count(*)
        FROM (SELECT DISTINCT unnest(p_days) AS day) d
        JOIN qi_study_fact f ON f.first_received_at >= d.day::timestamp AT TIME ZONE v_tz - interval '1 day'
                            AND f.first_received_at < (d.day + 1)::timestamp AT TIME ZONE v_tz + interval '1 day'
                            AND (f.first_received_at AT TIME ZONE v_tz)::date = d.day
        GROUP BY 1, 2, 3, 4, 5, 6;
    END IF;
END $$;
