-- The local days in TZ wholly inside [p_from, p_to): d1..d2 (none when d1 > d2). A bound
-- is a day's first instant when the microsecond before it has an earlier local date,
-- which holds in every zone, a DST change at midnight included.
CREATE OR REPLACE FUNCTION qi_hist_days(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (d1 date, d2 date)
LANGUAGE sql STABLE AS $$
    SELECT (p_from AT TIME ZONE q.tz)::date
             + CASE WHEN ((p_from - interval '1 microsecond') AT TIME ZONE q.tz)::date
                         < (p_from AT TIME ZONE q.tz)::date THEN 0 ELSE 1 END,
           ((p_to - interval '1 microsecond') AT TIME ZONE q.tz)::date
             - CASE WHEN ((p_to - interval '1 microsecond') AT TIME ZONE q.tz)::date
                         < (p_to AT TIME ZONE q.tz)::date THEN 0 ELSE 1 END
    FROM qi_settings q
$$;
