-- The public per-study view: cached rows of clean studies, live rows of dirty ones,
-- plus everything that depends on TZ, thresholds or the clock. Settings are read with
-- scalar subqueries (evaluated once per query), not a join (rescanned per row).
--
-- Clean studies are kept with `study_id NOT IN (SELECT study_id FROM qi_dirty)`, not
-- NOT EXISTS: with qi_dirty empty or small the planner turned NOT EXISTS into a
-- nested-loop anti join that rescans qi_dirty once per cached row (0.3-0.5 us a row, up
-- to 40 % of a query over a year of studies). NOT IN over the primary key (never NULL)
-- means the same and runs as one hash built per query, planned while qi_dirty's
-- estimated size fits in hash memory (still so with 250,000 dirty studies under
-- PostgreSQL's default work_mem of 4 MB).
--
-- A result that answers no send of the hub (ai_round_trip_s NULL beside an
-- ai_result_at, see qi_study_live.sql) is on time, and the AI round-trip SLA does not
-- apply to it. SLA states: met (value <= threshold), breached (value > threshold, or no
-- value yet and the threshold has elapsed since the stage's start), pending, NULL (does
-- not apply). Granted to grafana_ro (no patient names or ids).
CREATE OR REPLACE VIEW qi_study AS
SELECT x.*,
       x.ai_result_state IN ('late', 'overdue')    AS ai_overdue,
       x.ai_result_state IN ('overdue', 'waiting') AS ai_no_result
FROM (
    SELECT b.*,
           t.loc::date                                   AS received_day,
           date_trunc('week', t.loc)::date               AS received_week,
           date_trunc('month', t.loc)::date              AS received_month,
           date_trunc('day', t.loc) AT TIME ZONE (SELECT tz FROM qi_settings)    AS day_start,
           date_trunc('week', t.loc) AT TIME ZONE (SELECT tz FROM qi_settings)   AS week_start,
           date_trunc('month', t.loc) AT TIME ZONE (SELECT tz FROM qi_settings)  AS month_start,
           EXTRACT(hour FROM t.loc)::int                 AS received_hour,
           EXTRACT(isodow FROM t.loc)::int               AS received_isodow,
           CASE WHEN b.ai_sent_at IS NULL THEN NULL
                WHEN b.ai_result_at IS NOT NULL THEN
                    CASE WHEN b.ai_round_trip_s IS NULL
                              OR b.ai_round_trip_s <= (SELECT ai_result_timeout_s FROM qi_settings) THEN 'on_time'
                         ELSE 'late' END
                WHEN qi_seconds(now(), b.ai_sent_at) > (SELECT ai_result_timeout_s FROM qi_settings) THEN 'overdue'
                ELSE 'waiting' END                       AS ai_result_state,
           CASE WHEN NOT b.delivery_expected THEN NULL
                WHEN b.turnaround_s IS NOT NULL THEN
                    CASE WHEN b.turnaround_s <= (SELECT sla_turnaround_s FROM qi_settings) THEN 'met' ELSE 'breached' END
                WHEN qi_seconds(now(), b.first_received_at) > (SELECT sla_turnaround_s FROM qi_settings) THEN 'breached'
                ELSE 'pending' END                       AS sla_turnaround,
           CASE WHEN b.ai_sent_at IS NULL THEN NULL
                WHEN b.ai_round_trip_s IS NOT NULL THEN
                    CASE WHEN b.ai_round_trip_s <= (SELECT sla_ai_round_trip_s FROM qi_settings) THEN 'met' ELSE 'breached' END
                WHEN b.ai_result_at IS NOT NULL THEN NULL
                WHEN qi_seconds(now(), b.ai_sent_at) > (SELECT sla_ai_round_trip_s FROM qi_settings) THEN 'breached'
                ELSE 'pending' END                       AS sla_ai_round_trip,
           CASE WHEN NOT b.delivery_expected OR b.ready_at IS NULL THEN NULL
                WHEN b.to_destinations_s IS NOT NULL THEN
                    CASE WHEN b.to_destinations_s <= (SELECT sla_to_destinations_s FROM qi_settings) THEN 'met' ELSE 'breached' END
                WHEN qi_seconds(now(), b.ready_at) > (SELECT sla_to_destinations_s FROM qi_settings) THEN 'breached'
                ELSE 'pending' END                       AS sla_to_destinations
    FROM (
        SELECT f.* FROM qi_study_fact f
        WHERE f.study_id NOT IN (SELECT d.study_id FROM qi_dirty d)
        UNION ALL
        SELECT l.* FROM qi_study_live l
        WHERE l.study_id IN (SELECT d.study_id FROM qi_dirty d)
    ) b
    CROSS JOIN LATERAL (SELECT b.first_received_at AT TIME ZONE (SELECT tz FROM qi_settings) AS loc) t
) x;
