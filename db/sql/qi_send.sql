-- Per study, purpose and destination: what the required jobs did.
-- A required job is a routing job that is not a resend (no job_series row with
-- is_resend): resends never move a study's stage timestamps.
CREATE OR REPLACE VIEW qi_send AS
SELECT j.study_id,
       j.purpose,
       j.destination,
       count(*)                                                        AS n_jobs,
       count(*) FILTER (WHERE j.state = 'cancelled')                    AS n_cancelled,
       count(*) FILTER (WHERE j.state = 'succeeded')                    AS n_succeeded,
       count(*) FILTER (WHERE j.state = 'dead')                         AS n_dead,
       count(*) FILTER (WHERE j.state IN ('queued', 'sending', 'failed')) AS n_open,
       min(j.created_at)                                                AS first_queued_at,
       min(j.finished_at) FILTER (WHERE j.state = 'succeeded')          AS first_ok_at,
       max(j.finished_at) FILTER (WHERE j.state = 'succeeded')          AS last_ok_at,
       array_agg(DISTINCT j.rule_name ORDER BY j.rule_name)
           FILTER (WHERE j.rule_name IS NOT NULL)                       AS rules
FROM routing_jobs j
WHERE NOT EXISTS (SELECT 1 FROM job_series js WHERE js.job_id = j.id AND js.is_resend)
GROUP BY j.study_id, j.purpose, j.destination;
