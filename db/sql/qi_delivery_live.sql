-- One row per (study, purpose, destination) of required jobs, with the study's
-- dimensions so that filters need no join. Cached for clean studies in
-- qi_delivery_fact (created `AS SELECT * FROM qi_delivery_live WITH NO DATA`).
-- A send is measured from when what it carries was ready: the AI node and original
-- series from stable_at, a send carrying an AI result from ready_at (the EXISTS runs
-- only for deliveries on AI routes, where the two differ).
CREATE OR REPLACE VIEW qi_delivery_live AS
SELECT p.study_id,
       p.purpose,
       p.destination,
       p.rules,
       st.modality,
       st.source_aet,
       st.first_received_at,
       st.stable_at,
       st.ready_at,
       p.n_jobs,
       p.n_cancelled,
       p.n_succeeded,
       p.n_dead,
       p.n_open,
       p.first_queued_at,
       c.completed_at,
       CASE WHEN p.n_jobs = p.n_cancelled THEN 'cancelled'
            WHEN c.completed_at IS NOT NULL THEN 'succeeded'
            WHEN p.n_dead > 0 THEN 'failed'
            ELSE 'in_progress' END                                                 AS outcome,
       qi_seconds(c.completed_at,
                  CASE WHEN p.purpose = 'ai' OR NOT st.ai_route THEN st.stable_at
                       WHEN EXISTS (
                           SELECT 1
                           FROM routing_jobs dj
                           JOIN job_series js ON js.job_id = dj.id AND NOT js.is_resend
                           JOIN series sr ON sr.id = js.series_id AND sr.kind = 'ai_result'
                           WHERE dj.study_id = p.study_id AND dj.purpose = p.purpose
                             AND dj.destination = p.destination AND dj.state <> 'cancelled')
                       THEN st.ready_at
                       ELSE st.stable_at END)                                       AS to_destination_s,
       qi_seconds(c.completed_at, st.first_received_at)                             AS turnaround_s
FROM qi_send p
JOIN qi_study_live st ON st.study_id = p.study_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.n_jobs > p.n_cancelled AND p.n_succeeded = p.n_jobs - p.n_cancelled
                THEN p.last_ok_at END AS completed_at
) c;
