-- The studies behind one number of a QI page (issue 16, drill-down): the app's Studies list
-- reads it, so what a chart element or KPI counts and the rows listed under it agree.
-- Each measure selects rows with the same view columns and the same filters, buckets
-- and groups as the aggregate that shows the number:
--   per study (qi_filtered_studies, bucketed by first_received_at, groups of qi_group_keys):
--     received                     every study                       qi_volume, qi_study_outcomes.received
--     routed                       s.routed                          qi_study_outcomes.routed
--     outcome, value = outcome     s.outcome                         qi_study_outcomes (delivered, failed, ...)
--     stage, value = stage         the stage's seconds are known;    qi_stage_stats.n
--                                  with p_bin_s / p_max_s, in the    qi_stage_histogram (same bin expression)
--                                  bin starting at p_lo
--     sla_<metric>, value = state  met | breached | pending | due    qi_sla_compliance (due = met + breached)
--     ai, value = sent | with_result | overdue | no_result           qi_ai_outcomes
--     heat, p_lo = ISO weekday, p_hi = local hour                    qi_volume_heatmap
--   per (study, destination, purpose) (qi_filtered_deliveries; p_grp = destination, p_purpose):
--     delivery, value = outcome    d.outcome                         qi_delivery_outcomes
--     delivered_to                 d.completed_at known              qi_delivery_times.n
--   per finished attempt (qi_filtered_attempts, bucketed by the attempt's time; p_grp = destination):
--     attempt_failed               t.failed                          qi_attempt_failures.failed (studies)
--     error, value = first line    t.failed and t.error              qi_top_errors.studies
-- An unknown measure selects nothing. Common arguments of the aggregates: README.md;
-- p_bucket NULL = every bucket, p_grp NULL = every group.
CREATE OR REPLACE FUNCTION qi_drill_studies(p_measure text, p_value text, p_from timestamptz, p_to timestamptz,
                                            p_grain text DEFAULT 'all', p_bucket date DEFAULT NULL,
                                            p_group text DEFAULT 'none', p_grp text DEFAULT NULL,
                                            p_lo double precision DEFAULT NULL, p_hi double precision DEFAULT NULL,
                                            p_bin_s double precision DEFAULT NULL,
                                            p_max_s double precision DEFAULT NULL,
                                            p_purpose text DEFAULT NULL, p_modality text[] DEFAULT NULL,
                                            p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                            p_rule text[] DEFAULT NULL)
RETURNS TABLE (study_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT x.study_id FROM (
        SELECT s.study_id
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL (
            SELECT CASE p_value WHEN 'wait_stable' THEN s.wait_stable_s WHEN 'to_ai' THEN s.to_ai_s
                                WHEN 'ai_round_trip' THEN s.ai_round_trip_s
                                WHEN 'result_settle' THEN s.result_settle_s
                                WHEN 'to_destinations' THEN s.to_destinations_s
                                WHEN 'turnaround' THEN s.turnaround_s END AS v
        ) st
        WHERE p_measure IN ('received', 'routed', 'outcome', 'stage', 'sla_turnaround', 'sla_ai_round_trip',
                            'sla_to_destinations', 'ai', 'heat')
          AND (p_bucket IS NULL
               OR qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) IS NOT DISTINCT FROM p_bucket)
          AND (p_grp IS NULL OR p_grp = ANY (qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)))
          AND CASE p_measure
                WHEN 'received' THEN true
                WHEN 'routed' THEN s.routed
                WHEN 'outcome' THEN s.outcome = p_value
                WHEN 'stage' THEN st.v IS NOT NULL AND (
                    p_bin_s IS NULL
                    OR CASE WHEN st.v >= p_max_s THEN p_max_s ELSE floor(st.v / p_bin_s) * p_bin_s END = p_lo)
                WHEN 'sla_turnaround' THEN s.sla_turnaround = p_value
                    OR (p_value = 'due' AND s.sla_turnaround IN ('met', 'breached'))
                WHEN 'sla_ai_round_trip' THEN s.sla_ai_round_trip = p_value
                    OR (p_value = 'due' AND s.sla_ai_round_trip IN ('met', 'breached'))
                WHEN 'sla_to_destinations' THEN s.sla_to_destinations = p_value
                    OR (p_value = 'due' AND s.sla_to_destinations IN ('met', 'breached'))
                WHEN 'ai' THEN CASE p_value
                    WHEN 'sent' THEN s.ai_sent_at IS NOT NULL
                    WHEN 'with_result' THEN s.ai_result_state IN ('on_time', 'late')
                    WHEN 'overdue' THEN s.ai_overdue
                    WHEN 'no_result' THEN s.ai_no_result
                    ELSE false END
                WHEN 'heat' THEN s.received_isodow = p_lo AND s.received_hour = p_hi
                ELSE false END
        UNION
        SELECT d.study_id
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE p_measure IN ('delivery', 'delivered_to')
          AND (p_bucket IS NULL
               OR qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) IS NOT DISTINCT FROM p_bucket)
          AND (p_grp IS NULL OR d.destination = p_grp)
          AND (p_purpose IS NULL OR d.purpose = p_purpose)
          AND CASE p_measure
                WHEN 'delivery' THEN d.outcome = p_value
                ELSE d.completed_at IS NOT NULL END
        UNION
        SELECT t.study_id
        FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
        WHERE p_measure IN ('attempt_failed', 'error')
          AND t.failed
          AND (p_bucket IS NULL OR qi_bucket(p_grain, t.at_day, t.at_week, t.at_month) IS NOT DISTINCT FROM p_bucket)
          AND (p_grp IS NULL OR t.destination = p_grp)
          AND (p_measure = 'attempt_failed' OR t.error = p_value)
    ) x
$$;
