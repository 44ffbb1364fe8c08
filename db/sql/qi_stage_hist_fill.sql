-- Recompute the per-day histograms (qi_stage_hist) of the given local days in TZ from the
-- cached rows qi_study_fact, all days when p_days is NULL. Called by the triggers of
-- qi_study_fact (qi_stage_hist_sync), so qi_refresh, qi_rebuild and the loader of db/sql
-- keep it in step with the cache, and when qi_settings.tz changes (the day of a study
-- depends on it). Per (day, stage, bucket): the count and the values themselves. Then the
-- bucket counts of the months those days are in are summed again into qi_stage_hist_month
-- (migration 0015), so that a year's ranks sum a dozen months' counts (qi_hist_counts).
CREATE OR REPLACE FUNCTION qi_stage_hist_fill(p_days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    v_months date[] := (SELECT array_agg(DISTINCT date_trunc('month', d)::date) FROM unnest(p_days) AS d);
BEGIN
    IF p_days IS NULL THEN
        DELETE FROM qi_stage_hist;
        INSERT INTO qi_stage_hist (day, stage, bucket, n, vals)
        SELECT r.day, x.stage, qi_hist_bucket(x.v), count(*), array_agg(x.v)
        FROM (SELECT (f.first_received_at AT TIME ZONE v_tz)::date AS day, f.* FROM qi_study_fact f
              WHERE f.first_received_at IS NOT NULL) r
        CROSS JOIN LATERAL (VALUES (1::smallint, r.wait_stable_s), (2::smallint, r.to_ai_s),
                                   (3::smallint, r.ai_round_trip_s), (4::smallint, r.result_settle_s),
                                   (5::smallint, r.to_destinations_s), (6::smallint, r.turnaround_s)) AS x (stage, v)
        WHERE x.v IS NOT NULL
        GROUP BY 1, 2, 3;
    ELSE
        DELETE FROM qi_stage_hist WHERE day = ANY (p_days);
        INSERT INTO qi_stage_hist (day, stage, bucket, n, vals)
        SELECT d.day, x.stage, qi_hist_bucket(x.v), count(*), array_agg(x.v)
        FROM (SELECT DISTINCT unnest(p_days) AS day) d
        JOIN qi_study_fact f ON f.first_received_at >= d.day::timestamp AT TIME ZONE v_tz - interval '1 day'
                            AND f.first_received_at < (d.day + 1)::timestamp AT TIME ZONE v_tz + interval '1 day'
                            AND (f.first_received_at AT TIME ZONE v_tz)::date = d.day
        CROSS JOIN LATERAL (VALUES (1::smallint, f.wait_stable_s), (2::smallint, f.to_ai_s),
                                   (3::smallint, f.ai_round_trip_s), (4::smallint, f.result_settle_s),
                                   (5::smallint, f.to_destinations_s), (6::smallint, f.turnaround_s)) AS x (stage, v)
        WHERE x.v IS NOT NULL
        GROUP BY 1, 2, 3;
    END IF;
    IF p_days IS NULL THEN
        DELETE FROM qi_stage_hist_month;
    ELSE
        DELETE FROM qi_stage_hist_month WHERE month = ANY (v_months);
    END IF;
    INSERT INTO qi_stage_hist_month (month, stage, bucket, n)
    SELECT date_trunc('month', h.day)::date, h.stage, h.bucket, sum(h.n)
    FROM qi_stage_hist h
    WHERE p_days IS NULL
       OR (h.day >= (SELECT min(m) FROM unnest(v_months) AS m)
           AND h.day < (SELECT (max(m) + interval '1 month')::date FROM unnest(v_months) AS m)
           AND date_trunc('month', h.day)::date = ANY (v_months))
    GROUP BY 1, 2, 3;
END $$;
