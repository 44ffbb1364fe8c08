-- count, p50, p90, p95 and max of each stage duration. Aggregated wide (one FILTERed
-- aggregate per stage, skipped when the stage is not asked for), then unpivoted: cheaper
-- than unpivoting every study first. Groups by the constant 'all' when p_group is 'none'
-- (the group qi_group_keys gives every study then), so PostgreSQL does not sort every
-- study by an unknown group key before the percentiles sort their own values.
-- Without filters and groups (the pages' default) the answer comes from the per-day
-- histograms (qi_stage_stats_hist, the same numbers without reading every study); with
-- any filter or group every study of the window is read here. qi_hist_usable folds to a
-- constant, so only one branch runs.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_stage_stats(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                          p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                          p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                          p_rule text[] DEFAULT NULL, p_stages text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, stage text, n bigint,
               p50 double precision, p90 double precision, p95 double precision, max double precision)
LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_stage_stats_hist(p_from, p_to, p_grain, p_stages)
    WHERE qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
    UNION ALL
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, v.stage, v.n,
           v.pc[1], v.pc[2], v.pc[3], v.mx
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               CASE WHEN p_group = 'none' THEN 'all' ELSE g.grp END AS grp,
               count(s.wait_stable_s) FILTER (WHERE qi_wants(p_stages, 'wait_stable')) AS ws_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.wait_stable_s)
                   FILTER (WHERE qi_wants(p_stages, 'wait_stable')) AS ws_pc,
               max(s.wait_stable_s) FILTER (WHERE qi_wants(p_stages, 'wait_stable')) AS ws_mx,
               count(s.to_ai_s) FILTER (WHERE qi_wants(p_stages, 'to_ai')) AS ta_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.to_ai_s)
                   FILTER (WHERE qi_wants(p_stages, 'to_ai')) AS ta_pc,
               max(s.to_ai_s) FILTER (WHERE qi_wants(p_stages, 'to_ai')) AS ta_mx,
               count(s.ai_round_trip_s) FILTER (WHERE qi_wants(p_stages, 'ai_round_trip')) AS rt_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.ai_round_trip_s)
                   FILTER (WHERE qi_wants(p_stages, 'ai_round_trip')) AS rt_pc,
               max(s.ai_round_trip_s) FILTER (WHERE qi_wants(p_stages, 'ai_round_trip')) AS rt_mx,
               count(s.result_settle_s) FILTER (WHERE qi_wants(p_stages, 'result_settle')) AS rs_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.result_settle_s)
                   FILTER (WHERE qi_wants(p_stages, 'result_settle')) AS rs_pc,
               max(s.result_settle_s) FILTER (WHERE qi_wants(p_stages, 'result_settle')) AS rs_mx,
               count(s.to_destinations_s) FILTER (WHERE qi_wants(p_stages, 'to_destinations')) AS td_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.to_destinations_s)
                   FILTER (WHERE qi_wants(p_stages, 'to_destinations')) AS td_pc,
               max(s.to_destinations_s) FILTER (WHERE qi_wants(p_stages, 'to_destinations')) AS td_mx,
               count(s.turnaround_s) FILTER (WHERE qi_wants(p_stages, 'turnaround')) AS tt_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.turnaround_s)
                   FILTER (WHERE qi_wants(p_stages, 'turnaround')) AS tt_pc,
               max(s.turnaround_s) FILTER (WHERE qi_wants(p_stages, 'turnaround')) AS tt_mx
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    CROSS JOIN LATERAL (VALUES ('wait_stable', a.ws_n, a.ws_pc, a.ws_mx),
                               ('to_ai', a.ta_n, a.ta_pc, a.ta_mx),
                               ('ai_round_trip', a.rt_n, a.rt_pc, a.rt_mx),
                               ('result_settle', a.rs_n, a.rs_pc, a.rs_mx),
                               ('to_destinations', a.td_n, a.td_pc, a.td_mx),
                               ('turnaround', a.tt_n, a.tt_pc, a.tt_mx)) AS v (stage, n, pc, mx)
    WHERE v.n > 0 AND NOT qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
    ORDER BY 1, 3, 4
$$;
