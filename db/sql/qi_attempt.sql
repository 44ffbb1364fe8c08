-- One row per finished send attempt (its outcome event), bucketed by the attempt's time.
-- Granted to grafana_ro.
CREATE OR REPLACE VIEW qi_attempt AS
SELECT e.id          AS event_id,
       e.study_id,
       e.job_id,
       e.at,
       e.destination,
       j.purpose,
       j.rule_name,
       CASE e.type WHEN 'delivery_failed' THEN 'failed'
                   WHEN 'delivery_dead' THEN 'dead'
                   ELSE 'succeeded' END                               AS outcome,
       e.type IN ('delivery_failed', 'delivery_dead')                 AS failed,
       CASE WHEN e.type IN ('delivery_failed', 'delivery_dead') THEN
           COALESCE(NULLIF(btrim(left(split_part(e.detail ->> 'error', E'\n', 1), 200)), ''), '(no message)')
       END                                                            AS error,
       CASE WHEN jsonb_typeof(e.detail -> 'code') = 'number'
            THEN (e.detail ->> 'code')::numeric::integer END          AS error_code,
       t.loc::date                                                    AS at_day,
       date_trunc('week', t.loc)::date                                AS at_week,
       date_trunc('month', t.loc)::date                               AS at_month,
       date_trunc('day', t.loc) AT TIME ZONE (SELECT tz FROM qi_settings)                     AS day_start
FROM events e
LEFT JOIN routing_jobs j ON j.id = e.job_id
CROSS JOIN LATERAL (SELECT e.at AT TIME ZONE (SELECT tz FROM qi_settings) AS loc) t
WHERE e.type IN ('ai_sent', 'delivered', 'delivery_failed', 'delivery_dead');
