-- One row per local day: volumes, outcomes, stage percentiles and SLA compliance.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_daily_summary(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                            p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                            p_rule text[] DEFAULT NULL)
RETURNS TABLE (day date, studies bigint, routed bigint, unrouted bigint, delivered bigint, failed bigint,
               in_progress bigint, no_delivery bigint, delivered_rate double precision,
               failure_rate double precision, ai_sent bigint, ai_results bigint, ai_overdue bigint,
               ai_overdue_rate double precision,
               turnaround_n bigint, turnaround_p50 double precision, turnaround_p90 double precision,
               turnaround_p95 double precision, turnaround_max double precision,
               ai_round_trip_n bigint, ai_round_trip_p50 double precision, ai_round_trip_p90 double precision,
               ai_round_trip_p95 double precision, ai_round_trip_max double precision,
               to_destinations_n bigint, to_destinations_p50 double precision,
               to_destinations_p90 double precision, to_destinations_p95 double precision,
               to_destinations_max double precision,
               sla_turnaround_met bigint, sla_turnaround_due bigint, sla_turnaround_compliance double precision,
               sla_ai_round_trip_met bigint, sla_ai_round_trip_due bigint,
               sla_ai_round_trip_compliance double precision,
               sla_to_destinations_met bigint, sla_to_destinations_due bigint,
               sla_to_destinations_compliance double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.day, a.studies, a.routed, a.unrouted, a.delivered, a.failed, a.in_progress, a.no_delivery,
           a.delivered::double precision / NULLIF(a.routed, 0), a.failed::double precision / NULLIF(a.routed, 0),
           a.ai_sent, a.ai_results, a.ai_overdue, a.ai_overdue::double precision / NULLIF(a.ai_sent, 0),
           a.ta_n, a.ta[1], a.ta[2], a.ta[3], a.ta_max,
           a.ai_n, a.ai[1], a.ai[2], a.ai[3], a.ai_max,
           a.td_n, a.td[1], a.td[2], a.td[3], a.td_max,
           a.sla_ta_met, a.sla_ta_due, a.sla_ta_met::double precision / NULLIF(a.sla_ta_due, 0),
           a.sla_ai_met, a.sla_ai_due, a.sla_ai_met::double precision / NULLIF(a.sla_ai_due, 0),
           a.sla_td_met, a.sla_td_due, a.sla_td_met::double precision / NULLIF(a.sla_td_due, 0)
    FROM (
        SELECT s.received_day AS day,
               count(*)                                          AS studies,
               count(*) FILTER (WHERE s.routed)                  AS routed,
               count(*) FILTER (WHERE s.outcome = 'unrouted')    AS unrouted,
               count(*) FILTER (WHERE s.outcome = 'delivered')   AS delivered,
               count(*) FILTER (WHERE s.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE s.outcome = 'in_progress') AS in_progress,
               count(*) FILTER (WHERE s.outcome = 'no_delivery') AS no_delivery,
               count(s.ai_sent_at)                               AS ai_sent,
               count(*) FILTER (WHERE s.ai_sent_at IS NOT NULL AND s.ai_result_at IS NOT NULL) AS ai_results,
               count(*) FILTER (WHERE s.ai_overdue)              AS ai_overdue,
               count(s.turnaround_s)                             AS ta_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.turnaround_s) AS ta,
               max(s.turnaround_s)                               AS ta_max,
               count(s.ai_round_trip_s)                          AS ai_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.ai_round_trip_s) AS ai,
               max(s.ai_round_trip_s)                            AS ai_max,
               count(s.to_destinations_s)                        AS td_n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY s.to_destinations_s) AS td,
               max(s.to_destinations_s)                          AS td_max,
               count(*) FILTER (WHERE s.sla_turnaround = 'met')                          AS sla_ta_met,
               count(*) FILTER (WHERE s.sla_turnaround IN ('met', 'breached'))           AS sla_ta_due,
               count(*) FILTER (WHERE s.sla_ai_round_trip = 'met')                       AS sla_ai_met,
               count(*) FILTER (WHERE s.sla_ai_round_trip IN ('met', 'breached'))        AS sla_ai_due,
               count(*) FILTER (WHERE s.sla_to_destinations = 'met')                     AS sla_td_met,
               count(*) FILTER (WHERE s.sla_to_destinations IN ('met', 'breached'))      AS sla_td_due
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        GROUP BY 1
    ) a
    ORDER BY 1
$$;
