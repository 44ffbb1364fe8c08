"""QI: every duration measured from the attempt its evidence belongs to, so none is negative.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Replaces `qi_study_live`, `qi_delivery_live` (0002) and the public `qi_study` (0004)
with the same columns; only values change, and only where 0002's definitions paired an
end with the start of another attempt or payload. In both directions the cached rows of
clean studies are recomputed with the new definitions (RECACHE), so cached and live rows
never disagree; dirty studies stay dirty, as the next refresh expects.

What could go negative, and the definition that cannot
------------------------------------------------------
* ai_round_trip_s was `ai_result_at - ai_sent_at`, ai_sent_at being the first
  successful finish of a required AI job. When the worker sent to the AI, lost the
  outcome (Orthanc crashed, the worker was killed) and sent again, the AI could answer
  the first attempt before the second one finished: the result preceded ai_sent_at
  (-16 s was seen). Now a result at or after ai_sent_at is measured from ai_sent_at
  (as before); a result before it belongs to an earlier attempt and is measured from
  that attempt's start: the latest `delivery_started` of the study's non-resend AI jobs
  (cancelled ones included: their attempts reached the AI too) at or before the result.
  Attempt starts are the worker's clock, the result is Orthanc's whole second, so both
  are compared and subtracted at whole seconds (`qi_whole_second`). When no recorded
  start precedes the result (the start of the answered attempt was never recorded: the
  worker died between Orthanc accepting the store and writing it down), the round trip
  is measured from the first queueing of the AI job, which precedes every attempt.
  A result that precedes even that answers no send of the hub: no round trip (NULL),
  its ai_result_state is on_time and the AI round-trip SLA does not apply to it.
  (Falling back to the first attempt start instead would be negative by construction:
  the fallback applies exactly when the result precedes every recorded start.)
* delivered_at was the last finish of the required deliveries, once the AI result is
  stable on AI routes. A route that delivers the original series directly and also
  sends them to the AI finished its deliveries before the AI result existed, so
  delivered_at preceded ready_at (= ai_result_stable_at) and to_destinations_s was
  negative. delivered_at is now the moment the study became delivered: the later of the
  last required delivery and, on AI routes, the AI result's stability. turnaround_s
  and to_destinations_s follow.
* qi_delivery.to_destination_s was measured from the study's ready_at for every
  delivery, so a direct delivery of the originals on an AI route was negative (or NULL
  while the AI result was awaited). A send is now measured from when what it carries
  was ready: ready_at when one of its jobs carries an AI-result series, stable_at for
  the original series only (and for the AI node, as before).
* The others cannot go negative: each end is an Orthanc time (whole seconds) of an
  event caused by the start's event, and whole-second truncation keeps that order.
  wait_stable_s: StableStudy comes StableAge after the last instance (ReceptionDate);
  to_ai_s: AI jobs are queued at a stabilisation at or after the first (stable_at never
  moves), and finish after; result_settle_s: each AI-result series' StableSeries comes
  after its own instances, so the earliest stability is after the earliest reception;
  turnaround_s and qi_delivery.turnaround_s: every job is queued after the first
  reception.

Cache consistency: the live view now also reads `delivery_started` events, which the
dirty-marking triggers do not watch. Every such event is written by `jobs_started` in
the statement that updates the job's routing_jobs row, which marks the study dirty.

The downgrade restores 0002's live views and 0004's qi_study from their texts below
(kept verbatim, not extracted from the older revisions).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- t at whole-second precision in UTC (Orthanc's resolution), whatever the session's TimeZone.
CREATE FUNCTION qi_whole_second(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT date_trunc('second', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;

-- One row per study (orphan AI results excluded): docs/qi.md ("Per study"), every duration
-- from the attempt its evidence belongs to (see this revision's docstring).
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

-- One row per (study, purpose, destination) of required jobs. A send is measured from
-- when what it carries was ready: the AI node and original series from stable_at, a
-- send carrying an AI result from ready_at (the EXISTS runs only for deliveries on AI
-- routes, where the two differ).
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

-- The public per-study view (as in 0004), but for a result that answers no send of the
-- hub (ai_round_trip_s NULL beside an ai_result_at): on time, and no AI round-trip SLA.
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
"""

# The cached rows were computed with the definitions just replaced: recompute those of
# clean studies (what the public views read from the cache), as qi_rebuild() would, but
# leave qi_dirty as it is, so that a dirty study stays dirty and is read live.
RECACHE = """
SELECT pg_advisory_xact_lock(hashtext('hub.qi_refresh'));
DELETE FROM qi_study_fact;
DELETE FROM qi_delivery_fact;
INSERT INTO qi_study_fact SELECT * FROM qi_study_live WHERE study_id NOT IN (SELECT study_id FROM qi_dirty)
    ORDER BY first_received_at, study_id;
INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live WHERE study_id NOT IN (SELECT study_id FROM qi_dirty)
    ORDER BY first_received_at, study_id;
"""

# 0002's qi_study_live, verbatim but for CREATE OR REPLACE.
PREVIOUS_STUDY_LIVE = r"""
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
       qi_seconds(b.ai_result_at, b.ai_sent_at)          AS ai_round_trip_s,
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
           CASE WHEN j.n_delivery_jobs > 0 AND j.n_delivery_ok = j.n_delivery_jobs
                     AND (NOT j.ai_route OR se.ai_result_stable_at IS NOT NULL)
                THEN j.last_delivery_at END AS delivered_at,
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
"""

# 0002's qi_delivery_live, verbatim but for CREATE OR REPLACE.
PREVIOUS_DELIVERY_LIVE = r"""
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
                  CASE WHEN p.purpose = 'ai' THEN st.stable_at ELSE st.ready_at END) AS to_destination_s,
       qi_seconds(c.completed_at, st.first_received_at)                             AS turnaround_s
FROM qi_send p
JOIN qi_study_live st ON st.study_id = p.study_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.n_jobs > p.n_cancelled AND p.n_succeeded = p.n_jobs - p.n_cancelled
                THEN p.last_ok_at END AS completed_at
) c;
"""

# 0004's qi_study, verbatim.
PREVIOUS_STUDY = r"""
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
                    CASE WHEN b.ai_round_trip_s <= (SELECT ai_result_timeout_s FROM qi_settings) THEN 'on_time' ELSE 'late' END
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
"""

DOWNGRADE = PREVIOUS_STUDY_LIVE + PREVIOUS_DELIVERY_LIVE + PREVIOUS_STUDY + """
DROP FUNCTION qi_whole_second(timestamptz);
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(RECACHE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
    op.execute(RECACHE)
