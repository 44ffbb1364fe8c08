-- One row per study (orphan AI results excluded): the only place where docs/qi.md
-- ("Per study") is written in SQL: stage timestamps, durations, the routed / delivered /
-- failed flags. Cached for clean studies in qi_study_fact (created `AS SELECT * FROM
-- qi_study_live WITH NO DATA`, so the columns cannot drift: a change of columns here
-- needs the same change to qi_study_fact, see README.md).
--
-- * required job: not a resend (qi_send); resends never move a stage timestamp.
-- * ai_sent_at: first successful finish of a required AI job (= the first `ai_sent`).
-- * ai_result_at / ai_result_stable_at: earliest first_received_at / stable_at of the
--   study's ai_result series.
-- * ai_route: the study has a non-cancelled required AI job; ready_at is
--   ai_result_stable_at on AI routes, stable_at otherwise.
-- * modality: studies.modalities (the worker keeps it as the sorted original series
--   modalities joined by a backslash), else the same derived from the series.
-- * routed: at least one required job (any purpose, any state).
-- * outcome: unrouted | delivered | failed (a required job is dead) | in_progress
--   (something still queued/sending/retrying or awaited from the AI) | no_delivery.
-- * durations: seconds, double precision, UTC arithmetic so DST never shows
--   (qi_seconds); NULL when either end is missing.
--
-- Every duration is measured from the attempt (or payload) its end belongs to, so none
-- is negative (docs/qi.md, "Durations are never negative"), and none is clamped:
-- * ai_round_trip_s: a result at or after ai_sent_at (the first successful finish of a
--   required AI job) is measured from ai_sent_at. A result before it answers an earlier
--   attempt (the worker lost an outcome and sent again) and is measured from that
--   attempt's start: the latest `delivery_started` of the study's non-resend AI jobs
--   (cancelled ones included: their attempts reached the AI too) at or before the
--   result, compared at whole seconds (qi_whole_second; the result is Orthanc's whole
--   second). When no recorded start precedes the result (the worker died between
--   Orthanc accepting the store and writing it down), it is measured from the AI job's
--   first queueing, which precedes every attempt. A result that precedes even that
--   answers no send of the hub: no round trip (NULL). (The first attempt start is no
--   fallback: it is after the result exactly when the fallback applies.)
-- * delivered_at is the moment the study became delivered: the later of the last
--   required delivery and, on AI routes, the AI result's stability (a route may deliver
--   the originals before the AI result exists). turnaround_s and to_destinations_s end
--   there.
-- * The others cannot go negative: each end is an Orthanc time of an event its start
--   caused (wait_stable_s, to_ai_s, result_settle_s).
--
-- Cache consistency: this view also reads `delivery_started` events, which the
-- dirty-marking triggers do not watch; every such event is written in the statement
-- that updates its job's routing_jobs row, which marks the study dirty.
CREATE OR REPLACE VIEW qi_study_live AS
SELECT b.study_id,
       b.study_instance_uid,
       b.accession_number,
       b.modality,
       b.source_aet,
       b.status,
       b.first_received_at,
       b.stable_at,
       b.ai_sent_at,
       b.ai_result_at,
       b.ai_result_stable_at,
       b.ready_at,
       b.delivered_at,
       qi_seconds(b.stable_at, b.first_received_at)      AS wait_stable_s,
       qi_seconds(b.ai_sent_at, b.stable_at)             AS to_ai_s,
       qi_seconds(b.ai_result_at, b.ai_answered_at)      AS ai_round_trip_s,
       qi_seconds(b.ai_result_stable_at, b.ai_result_at) AS result_settle_s,
       qi_seconds(b.delivered_at, b.ready_at)            AS to_destinations_s,
       qi_seconds(b.delivered_at, b.first_received_at)   AS turnaround_s,
       b.routed,
       b.ai_route,
       b.delivery_expected,
       CASE WHEN NOT b.routed THEN 'unrouted'
            WHEN b.delivered_at IS NOT NULL THEN 'delivered'
            WHEN b.n_dead_jobs > 0 THEN 'failed'
            WHEN b.n_open_jobs > 0 OR (b.ai_route AND b.ai_result_stable_at IS NULL) THEN 'in_progress'
            ELSE 'no_delivery' END                        AS outcome,
       b.n_jobs,
       b.n_dead_jobs,
       b.n_open_jobs,
       b.n_delivery_jobs,
       b.n_delivery_ok,
       b.destinations,
       b.rules,
       b.destinations_ok,
       b.destinations_failed,
       b.destinations_pending
FROM (
    SELECT s.id                  AS study_id,
           s.study_uid           AS study_instance_uid,
           s.accession_number,
           COALESCE(NULLIF(s.modalities, ''), se.modalities) AS modality,
           s.source_aet,
           s.status,
           s.first_received_at,
           s.stable_at,
           j.ai_sent_at,
           se.ai_result_at,
           se.ai_result_stable_at,
           CASE WHEN COALESCE(j.ai_route, false) THEN se.ai_result_stable_at ELSE s.stable_at END AS ready_at,
           -- the moment the study became delivered: every required delivery done and, on
           -- AI routes, the AI result stable (originals may be delivered before it exists)
           CASE WHEN j.n_delivery_jobs > 0 AND j.n_delivery_ok = j.n_delivery_jobs
                     AND j.last_delivery_at IS NOT NULL
                     AND (NOT j.ai_route OR se.ai_result_stable_at IS NOT NULL)
                THEN GREATEST(j.last_delivery_at, CASE WHEN j.ai_route THEN se.ai_result_stable_at END)
           END AS delivered_at,
           -- the start of the send the first AI result answers: the recorded success when
           -- the result came after it, else the latest attempt start at or before the
           -- result, else the AI job's first queueing; NULL when the result precedes all
           CASE WHEN j.ai_sent_at IS NULL OR se.ai_result_at IS NULL THEN NULL
                WHEN se.ai_result_at >= j.ai_sent_at THEN j.ai_sent_at
                ELSE COALESCE(
                    (SELECT max(qi_whole_second(e.at))
                     FROM events e
                     JOIN routing_jobs aj ON aj.id = e.job_id
                     WHERE e.study_id = s.id AND e.type = 'delivery_started' AND aj.purpose = 'ai'
                       AND NOT EXISTS (SELECT 1 FROM job_series js WHERE js.job_id = aj.id AND js.is_resend)
                       AND qi_whole_second(e.at) <= se.ai_result_at),
                    CASE WHEN qi_whole_second(j.ai_queued_at) <= se.ai_result_at
                         THEN qi_whole_second(j.ai_queued_at) END)
           END AS ai_answered_at,
           COALESCE(j.n_jobs, 0) > 0                                        AS routed,
           COALESCE(j.ai_route, false)                                      AS ai_route,
           COALESCE(j.n_delivery_jobs > 0 OR j.ai_route, false)             AS delivery_expected,
           COALESCE(j.n_jobs, 0)          AS n_jobs,
           COALESCE(j.n_dead_jobs, 0)     AS n_dead_jobs,
           COALESCE(j.n_open_jobs, 0)     AS n_open_jobs,
           COALESCE(j.n_delivery_jobs, 0) AS n_delivery_jobs,
           COALESCE(j.n_delivery_ok, 0)   AS n_delivery_ok,
           j.destinations,
           r.rules,
           j.destinations_ok,
           j.destinations_failed,
           j.destinations_pending
    FROM studies s
    LEFT JOIN LATERAL (
        SELECT string_agg(DISTINCT sr.modality, '\' ORDER BY sr.modality)
                   FILTER (WHERE sr.kind = 'original' AND sr.modality <> '')   AS modalities,
               min(sr.first_received_at) FILTER (WHERE sr.kind = 'ai_result') AS ai_result_at,
               min(sr.stable_at) FILTER (WHERE sr.kind = 'ai_result')         AS ai_result_stable_at
        FROM series sr
        WHERE sr.study_id = s.id
    ) se ON true
    LEFT JOIN LATERAL (
        SELECT sum(p.n_jobs)::int                                                   AS n_jobs,
               sum(p.n_dead)::int                                                   AS n_dead_jobs,
               sum(p.n_open)::int                                                   AS n_open_jobs,
               (sum(p.n_jobs - p.n_cancelled) FILTER (WHERE p.purpose = 'delivery'))::int AS n_delivery_jobs,
               (sum(p.n_succeeded) FILTER (WHERE p.purpose = 'delivery'))::int      AS n_delivery_ok,
               min(p.first_ok_at) FILTER (WHERE p.purpose = 'ai')                   AS ai_sent_at,
               min(p.first_queued_at) FILTER (WHERE p.purpose = 'ai')               AS ai_queued_at,
               bool_or(p.purpose = 'ai' AND p.n_jobs > p.n_cancelled)               AS ai_route,
               max(p.last_ok_at) FILTER (WHERE p.purpose = 'delivery')              AS last_delivery_at,
               array_agg(DISTINCT p.destination ORDER BY p.destination)
                   FILTER (WHERE p.n_jobs > p.n_cancelled)                          AS destinations,
               array_agg(DISTINCT p.destination ORDER BY p.destination)
                   FILTER (WHERE p.n_jobs > p.n_cancelled AND p.n_succeeded = p.n_jobs - p.n_cancelled) AS destinations_ok,
               array_agg(DISTINCT p.destination ORDER BY p.destination)
                   FILTER (WHERE p.n_dead > 0)                                      AS destinations_failed,
               array_agg(DISTINCT p.destination ORDER BY p.destination)
                   FILTER (WHERE p.n_dead = 0 AND p.n_open > 0)                     AS destinations_pending
        FROM qi_send p
        WHERE p.study_id = s.id
    ) j ON true
    LEFT JOIN LATERAL (
        SELECT array_agg(DISTINCT rj.rule_name ORDER BY rj.rule_name) AS rules
        FROM routing_jobs rj
        WHERE rj.study_id = s.id AND rj.rule_name IS NOT NULL
    ) r ON true
    WHERE NOT s.orphan_ai_result
) b;
