-- qi_sla_compliance without filters or groups: the same counts without reading every
-- study of the window. A study with a value is met when value <= threshold, else
-- breached, whatever the clock says; and a value implies the SLA applies (a turnaround
-- or to_destinations value needs a delivery, an AI round trip a send: qi_study_live.sql).
-- So met and breached-with-a-value are counted from the per-day histograms (a bucket
-- wholly at or below the threshold, or wholly above it, counts as a whole; the values of
-- the one bucket around the threshold are compared one by one; qi_hist_delta corrects
-- for dirty studies and partial days; over whole months the counts are
-- qi_stage_hist_month's, through qi_hist_counts, and only the bucket around the threshold
-- reads its days' values, migration 0015). Studies without a value whose SLA applies, the
-- only ones whose state depends on now(), are read from qi_study through partial indexes
-- (migration 0012) and keep qi_study's own states. Called by qi_sla_compliance.
CREATE OR REPLACE FUNCTION qi_sla_compliance_hist(p_from timestamptz, p_to timestamptz, p_grain text)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, metric text, threshold_s integer,
               n_met bigint, n_breached bigint, n_pending bigint, n_due bigint, compliance double precision)
LANGUAGE sql STABLE AS $$
    WITH thr AS (
        SELECT m.stage, m.metric, m.t
        FROM qi_settings q
        CROSS JOIN LATERAL (VALUES (3::smallint, 'ai_round_trip', q.sla_ai_round_trip_s),
                                   (5::smallint, 'to_destinations', q.sla_to_destinations_s),
                                   (6::smallint, 'turnaround', q.sla_turnaround_s)) AS m (stage, metric, t)
    ), valued AS (
        SELECT COALESCE(qi_bucket(p_grain, x.day, date_trunc('week', x.day)::date, date_trunc('month', x.day)::date),
                        'infinity') AS bk, x.metric, sum(x.n) AS n, sum(x.met) AS met
        FROM (
            SELECT h.day, thr.metric, h.n,
                   CASE WHEN h.hb < cardinality(b.th) AND b.th[h.hb + 1] <= thr.t THEN h.n
                        WHEN h.hb >= 1 AND b.th[h.hb] > thr.t THEN 0
                        WHEN h.vals IS NOT NULL THEN (SELECT count(*) FROM unnest(h.vals) AS u (v) WHERE u.v <= thr.t)
                        ELSE (SELECT count(*) FROM qi_stage_hist v CROSS JOIN LATERAL unnest(v.vals) AS u (v)
                              WHERE v.stage = h.stage AND v.bucket = h.hb AND v.day BETWEEN h.day AND h.d_last
                                AND u.v <= thr.t) END::bigint AS met
            FROM (SELECT qi_hist_bounds() AS th) b
            CROSS JOIN qi_hist_counts(p_from, p_to, p_grain, ARRAY[3, 5, 6]::smallint[]) h
            JOIN thr ON thr.stage = h.stage
            UNION ALL
            SELECT d.day, thr.metric, d.sgn, CASE WHEN d.v <= thr.t THEN d.sgn ELSE 0 END
            FROM qi_hist_delta(p_from, p_to) d JOIN thr ON thr.stage = d.stage
        ) x
        GROUP BY 1, 2
    ), open AS (
        SELECT COALESCE(qi_bucket(p_grain, o.received_day, o.received_week, o.received_month), 'infinity') AS bk,
               o.metric, count(*) FILTER (WHERE o.state = 'breached') AS breached,
               count(*) FILTER (WHERE o.state = 'pending') AS pending
        FROM (
            SELECT s.received_day, s.received_week, s.received_month, 'turnaround' AS metric,
                   s.sla_turnaround AS state
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.delivery_expected AND s.turnaround_s IS NULL
            UNION ALL
            SELECT s.received_day, s.received_week, s.received_month, 'ai_round_trip', s.sla_ai_round_trip
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.ai_sent_at IS NOT NULL AND s.ai_round_trip_s IS NULL AND s.ai_result_at IS NULL
            UNION ALL
            SELECT s.received_day, s.received_week, s.received_month, 'to_destinations', s.sla_to_destinations
            FROM qi_study s
            WHERE s.first_received_at >= p_from AND s.first_received_at < p_to
              AND s.delivery_expected AND s.ready_at IS NOT NULL AND s.to_destinations_s IS NULL
        ) o
        GROUP BY 1, 2
    ), a AS (
        SELECT y.bk, y.metric, sum(y.met)::bigint AS met, sum(y.breached)::bigint AS breached,
               sum(y.pending)::bigint AS pending
        FROM (SELECT valued.bk, valued.metric, valued.met, valued.n - valued.met AS breached, 0 AS pending FROM valued
              UNION ALL
              SELECT open.bk, open.metric, 0, open.breached, open.pending FROM open) y
        GROUP BY 1, 2
    )
    SELECT NULLIF(a.bk, 'infinity'), NULLIF(a.bk, 'infinity')::timestamp AT TIME ZONE q.tz, 'all', a.metric,
           thr.t, a.met, a.breached, a.pending, a.met + a.breached,
           a.met::double precision / NULLIF(a.met + a.breached, 0)
    FROM a JOIN thr ON thr.metric = a.metric CROSS JOIN qi_settings q
    WHERE a.met + a.breached + a.pending > 0
    ORDER BY 1, 3, 4
$$;
