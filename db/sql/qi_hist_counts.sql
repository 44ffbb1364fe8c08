-- The bucket counts of qi_stage_hist over the whole local days of [p_from, p_to), for the
-- stages p_stages (positions in qi_hist_stages()), one row per (day, stage, bucket) or, with
-- buckets of whole months or the whole window (p_grain 'month' or 'all'), per (calendar
-- month wholly inside the window, stage, bucket) from qi_stage_hist_month, and per day only
-- for the days before and after those months (migration 0015). So a year's counts sum a
-- dozen months instead of 365 days. day is the first day a row counts, d_last its last:
-- the values of a bucket are those of qi_stage_hist over [day, d_last]; a day's row
-- carries them (vals, read only if used), a month's does not (NULL). Without
-- qi_hist_delta's corrections (dirty studies, partial days): the callers add them.
-- Read by qi_stage_stats_hist, qi_stage_histogram_hist, qi_sla_compliance_hist and
-- qi_ai_outcomes_hist.
CREATE OR REPLACE FUNCTION qi_hist_counts(p_from timestamptz, p_to timestamptz, p_grain text, p_stages smallint[])
RETURNS TABLE (day date, d_last date, stage smallint, hb integer, n bigint, vals double precision[])
LANGUAGE sql STABLE AS $$
    WITH r AS (   -- the whole months [mlo, mhi) inside [d1, d2] that month rows count, if any
        SELECT w.d1, w.d2, CASE WHEN m.lo < m.hi THEN m.lo END AS mlo, CASE WHEN m.lo < m.hi THEN m.hi END AS mhi
        FROM qi_hist_days(p_from, p_to) w
        CROSS JOIN LATERAL (
            SELECT CASE WHEN p_grain IN ('all', 'month')
                        THEN (date_trunc('month', w.d1 - 1) + interval '1 month')::date END AS lo,
                   CASE WHEN p_grain IN ('all', 'month') THEN date_trunc('month', w.d2 + 1)::date END AS hi
        ) m
    )
    SELECT h.day, h.day, h.stage, h.bucket, h.n::bigint, h.vals
    FROM r JOIN qi_stage_hist h ON h.stage = ANY (p_stages) AND h.day >= r.d1 AND h.day <= LEAST(r.d2, r.mlo - 1)
    UNION ALL
    SELECT h.day, h.day, h.stage, h.bucket, h.n::bigint, h.vals
    FROM r JOIN qi_stage_hist h ON h.stage = ANY (p_stages) AND h.day >= r.mhi AND h.day <= r.d2
    UNION ALL
    SELECT hm.month, (hm.month + interval '1 month')::date - 1, hm.stage, hm.bucket, hm.n, NULL
    FROM r JOIN qi_stage_hist_month hm ON hm.stage = ANY (p_stages) AND hm.month >= r.mlo AND hm.month < r.mhi
$$;
