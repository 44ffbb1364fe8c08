-- SLA compliance per metric: met / (met + breached); pending is shown, not counted.
-- Without filters and groups from the per-day histograms (qi_sla_compliance_hist, the
-- same counts); otherwise every study of the window is read here.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_sla_compliance(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                             p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                             p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                             p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, metric text, threshold_s integer,
               n_met bigint, n_breached bigint, n_pending bigint, n_due bigint, compliance double precision)
LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_sla_compliance_hist(p_from, p_to, p_grain)
    WHERE qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
    UNION ALL
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, v.metric, v.threshold_s,
           v.met, v.breached, v.pending, v.met + v.breached,
           v.met::double precision / NULLIF(v.met + v.breached, 0)
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
               count(*) FILTER (WHERE s.sla_turnaround = 'met') AS ta_met,
               count(*) FILTER (WHERE s.sla_turnaround = 'breached') AS ta_breached,
               count(*) FILTER (WHERE s.sla_turnaround = 'pending') AS ta_pending,
               count(*) FILTER (WHERE s.sla_ai_round_trip = 'met') AS rt_met,
               count(*) FILTER (WHERE s.sla_ai_round_trip = 'breached') AS rt_breached,
               count(*) FILTER (WHERE s.sla_ai_round_trip = 'pending') AS rt_pending,
               count(*) FILTER (WHERE s.sla_to_destinations = 'met') AS td_met,
               count(*) FILTER (WHERE s.sla_to_destinations = 'breached') AS td_breached,
               count(*) FILTER (WHERE s.sla_to_destinations = 'pending') AS td_pending
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    CROSS JOIN LATERAL (VALUES ('turnaround', q.sla_turnaround_s, a.ta_met, a.ta_breached, a.ta_pending),
                               ('ai_round_trip', q.sla_ai_round_trip_s, a.rt_met, a.rt_breached, a.rt_pending),
                               ('to_destinations', q.sla_to_destinations_s, a.td_met, a.td_breached, a.td_pending))
        AS v (metric, threshold_s, met, breached, pending)
    WHERE v.met + v.breached + v.pending > 0 AND NOT qi_hist_usable(p_from, p_to, p_group, p_modality, p_source, p_destination, p_rule)
    ORDER BY 1, 3, 4
$$;
