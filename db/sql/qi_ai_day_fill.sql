-- Recompute qi_ai_day (migration 0014) for the given local days in TZ from the cached
-- rows qi_study_fact, all days when p_days is NULL: studies per local day of first
-- reception and the AI flags qi_ai_outcomes counts (ai_route, sent, a result received),
-- none of which depends on the clock or a threshold. Called with qi_stage_hist_fill by
-- qi_stage_hist_sync.
CREATE OR REPLACE FUNCTION qi_ai_day_fill(p_days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
BEGIN
    IF p_days IS NULL THEN
        DELETE FROM qi_ai_day;
        INSERT INTO qi_ai_day (day, ai_route, ai_sent, ai_result, n)
        SELECT (f.first_received_at AT TIME ZONE v_tz)::date, f.ai_route, f.ai_sent_at IS NOT NULL,
               f.ai_result_at IS NOT NULL, count(*)
        FROM qi_study_fact f
        WHERE f.first_received_at IS NOT NULL AND (f.ai_route OR f.ai_sent_at IS NOT NULL)
        GROUP BY 1, 2, 3, 4;
    ELSE
        DELETE FROM qi_ai_day WHERE day = ANY (p_days);
        INSERT INTO qi_ai_day (day, ai_route, ai_sent, ai_result, n)
        SELECT d.day, f.ai_route, f.ai_sent_at IS NOT NULL, f.ai_result_at IS NOT NULL, count(*)
        FROM (SELECT DISTINCT unnest(p_days) AS day) d
        JOIN qi_study_fact f ON f.first_received_at >= d.day::timestamp AT TIME ZONE v_tz - interval '1 day'
                            AND f.first_received_at < (d.day + 1)::timestamp AT TIME ZONE v_tz + interval '1 day'
                            AND (f.first_received_at AT TIME ZONE v_tz)::date = d.day
        WHERE f.ai_route OR f.ai_sent_at IS NOT NULL
        GROUP BY 1, 2, 3, 4;
    END IF;
END $$;
