"""QI analytics: per-study stage views, their incremental cache, and the aggregate functions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

One definition per metric
-------------------------
* `qi_send` (per study, purpose and destination, over the *required* jobs) and
  `qi_study_live` / `qi_delivery_live` (per study / per study and destination) are
  the only place where docs/qi.md ("Per study") is written in SQL: stage timestamps,
  durations, routed / delivered / failed flags.
* `qi_study_fact` and `qi_delivery_fact` are caches of exactly those two views
  (created `AS SELECT * FROM <view> WITH NO DATA`, so the columns cannot drift). They
  exist because recomputing the live view for a year of studies takes seconds (4.1 s
  against 0.36 s from the cache at 1M studies; bench/RESULTS.md). Triggers on studies, series and routing_jobs put the study in
  `qi_dirty`; `qi_refresh()` recomputes the dirty studies. The public views
  `qi_study` and `qi_delivery` read the cache for clean studies and the live view for
  dirty ones, so their answers are always current, whether or not a refresh ran:
  refreshing is only a matter of speed.
* Anything that depends on the clock or on settings (SLA states, AI overdue, local
  day/week/month buckets in TZ) is computed in `qi_study` / `qi_delivery` /
  `qi_attempt` from the one-row table `qi_settings`, which the worker, app and CLI
  upsert from `.env` (`core.qi.sync_qi_settings`). It is never cached.
* Aggregates (counts, p50/p90/p95 via percentile_cont, max, rates with their
  denominators) are parameterised SQL functions `qi_*(p_from, p_to, ...)` over those
  views. Functions, not views, because a percentile cannot be re-aggregated: filters
  (dates, modality, source, destination, rule) must apply before aggregating. They
  are plain `LANGUAGE sql STABLE` functions, which PostgreSQL inlines into the
  calling query, so the date range still uses the index on first_received_at.

Stage definitions (also in docs/qi.md)
--------------------------------------
* required job: a routing job that is not an operator resend (no job_series row with
  is_resend). Resends never move a study's stage timestamps.
* ai_sent_at: first successful finish of an AI job (= the first `ai_sent` event).
* ai_result_at / ai_result_stable_at: earliest first_received_at / stable_at of the
  study's ai_result series.
* ai_route: the study has a non-cancelled required AI job.
* ready_at: ai_result_stable_at on AI routes, stable_at otherwise.
* delivered_at: the last finish of the study's required delivery jobs, only when
  every non-cancelled one succeeded (and, on AI routes, the AI result is stable, so
  a study is not "delivered" before its results exist).
* durations (seconds, double precision, UTC arithmetic so DST never shows):
  wait_stable_s, to_ai_s, ai_round_trip_s, result_settle_s, to_destinations_s,
  turnaround_s as in docs/qi.md ("Per study"). NULL when either end is missing. Not clamped.
* modality: studies.modalities (the worker keeps it as the sorted original series
  modalities joined by a backslash), else the same derived from the series.
* routed: the study has at least one required job (any purpose, any state).
* outcome: unrouted | delivered | failed (a required job is dead) | in_progress
  (something still queued/sending/retrying or awaited from the AI) | no_delivery.
* SLA state per metric: met (value <= threshold), breached (value > threshold, or no
  value yet and the threshold has elapsed since the stage's start), pending (no
  value, still within the threshold), NULL (does not apply). Compliance =
  met / (met + breached).
* AI result state (studies with ai_sent_at): on_time, late (result after
  AI_RESULT_TIMEOUT), overdue (no result and the timeout has elapsed), waiting.
  ai_overdue = late or overdue.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Settings the views need (single row; core.qi.sync_qi_settings upserts it from .env).
CREATE TABLE qi_settings (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    tz                    text    NOT NULL DEFAULT 'America/Los_Angeles',
    ai_result_timeout_s   integer NOT NULL DEFAULT 1800 CHECK (ai_result_timeout_s > 0),
    sla_turnaround_s      integer NOT NULL DEFAULT 3600 CHECK (sla_turnaround_s > 0),
    sla_ai_round_trip_s   integer NOT NULL DEFAULT 1800 CHECK (sla_ai_round_trip_s > 0),
    sla_to_destinations_s integer NOT NULL DEFAULT 600 CHECK (sla_to_destinations_s > 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO qi_settings DEFAULT VALUES;

-- b - a in seconds (timestamptz arithmetic is UTC, so DST changes add no hour).
CREATE FUNCTION qi_seconds(b timestamptz, a timestamptz) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT EXTRACT(EPOCH FROM (b - a))::double precision $$;

-- Helps the live views find resends and the attempt queries find outcomes.
CREATE INDEX job_series_resend_idx ON job_series (job_id) WHERE is_resend;
CREATE INDEX events_outcome_idx ON events (at) INCLUDE (type, destination, job_id, study_id)
    WHERE type IN ('ai_sent', 'delivered', 'delivery_failed', 'delivery_dead');

-- Per study, purpose and destination: what the required jobs did.
CREATE VIEW qi_send AS
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

-- One row per study (orphan AI results excluded): docs/qi.md ("Per study").
CREATE VIEW qi_study_live AS
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

-- One row per (study, purpose, destination) of required jobs, with the study's
-- dimensions so that filters need no join.
CREATE VIEW qi_delivery_live AS
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

-- Caches of the two live views (same columns by construction).
CREATE TABLE qi_study_fact AS SELECT * FROM qi_study_live WITH NO DATA;
ALTER TABLE qi_study_fact ADD PRIMARY KEY (study_id);
CREATE INDEX qi_study_fact_received_idx ON qi_study_fact (first_received_at);
CREATE TABLE qi_delivery_fact AS SELECT * FROM qi_delivery_live WITH NO DATA;
ALTER TABLE qi_delivery_fact ADD PRIMARY KEY (study_id, purpose, destination);
CREATE INDEX qi_delivery_fact_received_idx ON qi_delivery_fact (first_received_at);

-- Studies whose cached rows may be stale. Writers upsert (DO UPDATE, which locks the
-- row until they commit); qi_refresh deletes with SKIP LOCKED before recomputing, so
-- a change that commits during a refresh always leaves its study dirty.
CREATE TABLE qi_dirty (
    study_id  bigint PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION qi_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'studies' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO qi_dirty (study_id) SELECT DISTINCT id FROM old_rows
            ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
        ELSE
            INSERT INTO qi_dirty (study_id) SELECT DISTINCT id FROM new_rows
            ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO qi_dirty (study_id) SELECT DISTINCT study_id FROM old_rows
        ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
    ELSE
        INSERT INTO qi_dirty (study_id) SELECT DISTINCT study_id FROM new_rows
        ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER qi_dirty_ins AFTER INSERT ON studies REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_upd AFTER UPDATE ON studies REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_del AFTER DELETE ON studies REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_ins AFTER INSERT ON series REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_upd AFTER UPDATE ON series REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_del AFTER DELETE ON series REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_ins AFTER INSERT ON routing_jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_upd AFTER UPDATE ON routing_jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();
CREATE TRIGGER qi_dirty_del AFTER DELETE ON routing_jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION qi_mark_dirty();

-- Recompute up to p_limit dirty studies; returns how many. Concurrent callers skip.
CREATE FUNCTION qi_refresh(p_limit integer DEFAULT 20000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('hub.qi_refresh')) THEN
        RETURN 0;
    END IF;
    WITH picked AS (
        SELECT d.study_id FROM qi_dirty d ORDER BY d.marked_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM qi_dirty d USING picked p WHERE d.study_id = p.study_id RETURNING d.study_id
    )
    SELECT array_agg(gone.study_id) INTO ids FROM gone;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM qi_study_fact WHERE study_id = ANY (ids);
    DELETE FROM qi_delivery_fact WHERE study_id = ANY (ids);
    INSERT INTO qi_study_fact SELECT * FROM qi_study_live WHERE study_id = ANY (ids)
        ORDER BY first_received_at, study_id;
    INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live WHERE study_id = ANY (ids)
        ORDER BY first_received_at, study_id;
    RETURN cardinality(ids);
END $$;

-- Recompute every study (after a bulk load, or to repair); returns the study count.
CREATE FUNCTION qi_rebuild() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hub.qi_refresh'));
    DELETE FROM qi_dirty WHERE study_id IN (SELECT study_id FROM qi_dirty FOR UPDATE SKIP LOCKED);
    DELETE FROM qi_study_fact;
    DELETE FROM qi_delivery_fact;
    -- in arrival order, so that a date range reads neighbouring pages
    INSERT INTO qi_study_fact SELECT * FROM qi_study_live ORDER BY first_received_at, study_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live ORDER BY first_received_at, study_id;
    RETURN n;
END $$;

-- The public per-study view: cached rows of clean studies, live rows of dirty ones,
-- plus everything that depends on TZ, thresholds or the clock. Settings are read with
-- scalar subqueries (evaluated once per query), not a join (rescanned per row).
CREATE VIEW qi_study AS
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
        WHERE NOT EXISTS (SELECT 1 FROM qi_dirty d WHERE d.study_id = f.study_id)
        UNION ALL
        SELECT l.* FROM qi_study_live l
        WHERE l.study_id IN (SELECT d.study_id FROM qi_dirty d)
    ) b
    CROSS JOIN LATERAL (SELECT b.first_received_at AT TIME ZONE (SELECT tz FROM qi_settings) AS loc) t
) x;

-- The public per-(study, purpose, destination) view.
CREATE VIEW qi_delivery AS
SELECT b.*,
       t.loc::date                                  AS received_day,
       date_trunc('week', t.loc)::date              AS received_week,
       date_trunc('month', t.loc)::date             AS received_month
FROM (
    SELECT f.* FROM qi_delivery_fact f
    WHERE NOT EXISTS (SELECT 1 FROM qi_dirty d WHERE d.study_id = f.study_id)
    UNION ALL
    SELECT l.* FROM qi_delivery_live l
    WHERE l.study_id IN (SELECT d.study_id FROM qi_dirty d)
) b
CROSS JOIN LATERAL (SELECT b.first_received_at AT TIME ZONE (SELECT tz FROM qi_settings) AS loc) t;

-- One row per finished send attempt (its outcome event), bucketed by the attempt's time.
CREATE VIEW qi_attempt AS
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

-- ---- helpers of the aggregate functions --------------------------------------------

-- The bucket of a row for a grain ('day', 'week', 'month'; anything else: one bucket).
CREATE FUNCTION qi_bucket(p_grain text, d date, w date, m date) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_grain WHEN 'day' THEN d WHEN 'week' THEN w WHEN 'month' THEN m END
$$;

-- The groups a study belongs to: one modality or source, every destination or rule.
CREATE FUNCTION qi_group_keys(p_group text, modality text, source_aet text, destinations text[], rules text[])
RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_group
        WHEN 'modality' THEN ARRAY[COALESCE(modality, '(none)')]
        WHEN 'source_aet' THEN ARRAY[COALESCE(source_aet, '(none)')]
        WHEN 'destination' THEN destinations
        WHEN 'rule' THEN rules
        ELSE ARRAY['all'] END
$$;

-- Whether a stage / metric was asked for (NULL = all); folds to a constant in custom plans,
-- so an aggregate whose FILTER is false reads no rows at all.
CREATE FUNCTION qi_wants(p_list text[], p_item text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_list IS NULL OR p_item = ANY (p_list) $$;

-- Studies first received in [p_from, p_to) matching the filters (NULL = any).
CREATE FUNCTION qi_filtered_studies(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                    p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                    p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_study LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_study s
    WHERE s.first_received_at >= COALESCE(p_from, '-infinity')
      AND s.first_received_at < COALESCE(p_to, 'infinity')
      AND (p_modality IS NULL OR s.modality = ANY (p_modality))
      AND (p_source IS NULL OR s.source_aet = ANY (p_source))
      AND (p_destination IS NULL OR s.destinations && p_destination)
      AND (p_rule IS NULL OR s.rules && p_rule)
$$;

CREATE FUNCTION qi_filtered_deliveries(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                       p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                       p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_delivery LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_delivery d
    WHERE d.first_received_at >= COALESCE(p_from, '-infinity')
      AND d.first_received_at < COALESCE(p_to, 'infinity')
      AND (p_modality IS NULL OR d.modality = ANY (p_modality))
      AND (p_source IS NULL OR d.source_aet = ANY (p_source))
      AND (p_destination IS NULL OR d.destination = ANY (p_destination))
      AND (p_rule IS NULL OR d.rules && p_rule)
$$;

-- Attempts that finished in [p_from, p_to) (event time), matching the filters.
CREATE FUNCTION qi_filtered_attempts(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                     p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                     p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_attempt LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_attempt a
    WHERE a.at >= COALESCE(p_from, '-infinity')
      AND a.at < COALESCE(p_to, 'infinity')
      AND (p_destination IS NULL OR a.destination = ANY (p_destination))
      AND (p_rule IS NULL OR a.rule_name = ANY (p_rule))
      AND (p_source IS NULL OR EXISTS (
              SELECT 1 FROM studies st WHERE st.id = a.study_id AND st.source_aet = ANY (p_source)))
      AND (p_modality IS NULL OR EXISTS (
              SELECT 1 FROM qi_study q WHERE q.study_id = a.study_id AND q.modality = ANY (p_modality)))
$$;

-- ---- aggregates ----------------------------------------------------------------------
-- Common arguments: p_from, p_to (timestamptz, [from, to)), p_grain ('day' | 'week' |
-- 'month' | 'all', buckets in TZ), p_group ('none' | 'modality' | 'source_aet' |
-- 'destination' | 'rule'), then the filters p_modality, p_source, p_destination,
-- p_rule (text[], NULL = any). Study metrics are bucketed by first_received_at.

-- count, p50, p90, p95 and max of each stage duration. Aggregated wide (one FILTERed
-- aggregate per stage, skipped when the stage is not asked for), then unpivoted: cheaper
-- than unpivoting every study first.
CREATE FUNCTION qi_stage_stats(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                               p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                               p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                               p_rule text[] DEFAULT NULL, p_stages text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, stage text, n bigint,
               p50 double precision, p90 double precision, p95 double precision, max double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, v.stage, v.n,
           v.pc[1], v.pc[2], v.pc[3], v.mx
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
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
    WHERE v.n > 0
    ORDER BY 1, 3, 4
$$;

-- Histogram of one stage: bins of p_bin_s seconds; values >= p_max_s share the last
-- bin (bin_end = Infinity).
CREATE FUNCTION qi_stage_histogram(p_stage text, p_bin_s double precision, p_max_s double precision,
                                   p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                   p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                   p_rule text[] DEFAULT NULL)
RETURNS TABLE (bin_start double precision, bin_end double precision, n bigint)
LANGUAGE sql STABLE AS $$
    SELECT h.lo, CASE WHEN h.lo >= p_max_s THEN 'Infinity'::double precision ELSE h.lo + p_bin_s END,
           count(*)
    FROM (
        SELECT CASE WHEN x.v >= p_max_s THEN p_max_s ELSE floor(x.v / p_bin_s) * p_bin_s END AS lo
        FROM (
            SELECT CASE p_stage WHEN 'wait_stable' THEN s.wait_stable_s WHEN 'to_ai' THEN s.to_ai_s
                                WHEN 'ai_round_trip' THEN s.ai_round_trip_s WHEN 'result_settle' THEN s.result_settle_s
                                WHEN 'to_destinations' THEN s.to_destinations_s WHEN 'turnaround' THEN s.turnaround_s
                   END AS v
            FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        ) x
        WHERE x.v IS NOT NULL
    ) h
    GROUP BY h.lo
    ORDER BY h.lo
$$;

-- SLA compliance per metric: met / (met + breached); pending is shown, not counted.
CREATE FUNCTION qi_sla_compliance(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                  p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                  p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                  p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, metric text, threshold_s integer,
               n_met bigint, n_breached bigint, n_pending bigint, n_due bigint, compliance double precision)
LANGUAGE sql STABLE AS $$
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
    WHERE v.met + v.breached + v.pending > 0
    ORDER BY 1, 3, 4
$$;

-- Study outcomes; rates are over routed studies (unrouted ones are counted, not rated).
CREATE FUNCTION qi_study_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                  p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                  p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                  p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, received bigint, routed bigint,
               unrouted bigint, delivered bigint, failed bigint, in_progress bigint, no_delivery bigint,
               delivered_rate double precision, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.received, a.routed, a.unrouted,
           a.delivered, a.failed, a.in_progress, a.no_delivery,
           a.delivered::double precision / NULLIF(a.routed, 0),
           a.failed::double precision / NULLIF(a.routed, 0)
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
               count(*)                                          AS received,
               count(*) FILTER (WHERE s.routed)                  AS routed,
               count(*) FILTER (WHERE s.outcome = 'unrouted')    AS unrouted,
               count(*) FILTER (WHERE s.outcome = 'delivered')   AS delivered,
               count(*) FILTER (WHERE s.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE s.outcome = 'in_progress') AS in_progress,
               count(*) FILTER (WHERE s.outcome = 'no_delivery') AS no_delivery
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;

-- Per destination (and purpose): outcomes of (study, destination) sends; cancelled sends
-- are left out of the denominator.
CREATE FUNCTION qi_delivery_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
                                     p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                                     p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, purpose text, sends bigint,
               succeeded bigint, failed bigint, in_progress bigint, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.purpose, a.sends,
           a.succeeded, a.failed, a.in_progress, a.failed::double precision / NULLIF(a.sends, 0)
    FROM (
        SELECT qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) AS bucket,
               d.destination, d.purpose,
               count(*)                                          AS sends,
               count(*) FILTER (WHERE d.outcome = 'succeeded')   AS succeeded,
               count(*) FILTER (WHERE d.outcome = 'failed')      AS failed,
               count(*) FILTER (WHERE d.outcome = 'in_progress') AS in_progress
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE d.outcome <> 'cancelled'
        GROUP BY 1, 2, 3
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3, 4
$$;

-- Per destination (and purpose): time from ready (stable for the AI) and from first
-- reception until that destination's required sends all succeeded.
CREATE FUNCTION qi_delivery_times(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
                                  p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                                  p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, purpose text, n bigint,
               to_destination_p50 double precision, to_destination_p90 double precision,
               to_destination_p95 double precision, to_destination_max double precision,
               turnaround_p50 double precision, turnaround_p90 double precision,
               turnaround_p95 double precision, turnaround_max double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.purpose, a.n,
           a.td[1], a.td[2], a.td[3], a.td_max, a.ta[1], a.ta[2], a.ta[3], a.ta_max
    FROM (
        SELECT qi_bucket(p_grain, d.received_day, d.received_week, d.received_month) AS bucket,
               d.destination, d.purpose,
               count(*)                AS n,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.to_destination_s) AS td,
               max(d.to_destination_s) AS td_max,
               percentile_cont(ARRAY[0.5, 0.9, 0.95]) WITHIN GROUP (ORDER BY d.turnaround_s) AS ta,
               max(d.turnaround_s)     AS ta_max
        FROM qi_filtered_deliveries(p_from, p_to, p_modality, p_source, p_destination, p_rule) d
        WHERE d.completed_at IS NOT NULL
        GROUP BY 1, 2, 3
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3, 4
$$;

-- Send attempts by the time they finished: failed / finished attempts, per destination
-- (p_by_destination false: one row per bucket, destination 'all').
CREATE FUNCTION qi_attempt_failures(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                    p_by_destination boolean DEFAULT true, p_modality text[] DEFAULT NULL,
                                    p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                    p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, destination text, attempts bigint, failed bigint,
               retried bigint, dead bigint, failure_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.destination, a.attempts, a.failed,
           a.retried, a.dead, a.failed::double precision / NULLIF(a.attempts, 0)
    FROM (
        SELECT qi_bucket(p_grain, t.at_day, t.at_week, t.at_month) AS bucket,
               CASE WHEN p_by_destination THEN t.destination ELSE 'all' END AS destination,
               count(*)                                    AS attempts,
               count(*) FILTER (WHERE t.failed)            AS failed,
               count(*) FILTER (WHERE t.outcome = 'failed') AS retried,
               count(*) FILTER (WHERE t.outcome = 'dead')   AS dead
        FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;

-- The most frequent error messages of failed attempts; share = of all failed attempts.
CREATE FUNCTION qi_top_errors(p_from timestamptz, p_to timestamptz, p_limit integer DEFAULT 10,
                              p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                              p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (error text, failed bigint, dead bigint, jobs bigint, studies bigint, destinations text[],
               first_at timestamptz, last_at timestamptz, share double precision)
LANGUAGE sql STABLE AS $$
    SELECT t.error, count(*), count(*) FILTER (WHERE t.outcome = 'dead'), count(DISTINCT t.job_id),
           count(DISTINCT t.study_id), array_agg(DISTINCT t.destination ORDER BY t.destination),
           min(t.at), max(t.at), count(*)::double precision / sum(count(*)) OVER ()
    FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
    WHERE t.failed
    GROUP BY t.error
    ORDER BY count(*) DESC, t.error
    LIMIT p_limit
$$;

-- AI results: rates over studies sent to the AI.
CREATE FUNCTION qi_ai_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                               p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                               p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                               p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, ai_routed bigint, not_sent bigint,
               sent bigint, with_result bigint, on_time bigint, late bigint, overdue_missing bigint,
               waiting bigint, overdue bigint, overdue_rate double precision, no_result bigint,
               no_result_rate double precision)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.ai_routed, a.not_sent, a.sent,
           a.on_time + a.late, a.on_time, a.late, a.overdue_missing, a.waiting,
           a.late + a.overdue_missing, (a.late + a.overdue_missing)::double precision / NULLIF(a.sent, 0),
           a.overdue_missing + a.waiting, (a.overdue_missing + a.waiting)::double precision / NULLIF(a.sent, 0)
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp,
               count(*) FILTER (WHERE s.ai_route)                               AS ai_routed,
               count(*) FILTER (WHERE s.ai_route AND s.ai_sent_at IS NULL)      AS not_sent,
               count(*) FILTER (WHERE s.ai_sent_at IS NOT NULL)                 AS sent,
               count(*) FILTER (WHERE s.ai_result_state = 'on_time')            AS on_time,
               count(*) FILTER (WHERE s.ai_result_state = 'late')               AS late,
               count(*) FILTER (WHERE s.ai_result_state = 'overdue')            AS overdue_missing,
               count(*) FILTER (WHERE s.ai_result_state = 'waiting')            AS waiting
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        WHERE s.ai_route OR s.ai_sent_at IS NOT NULL
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;

-- Studies received per bucket and group.
CREATE FUNCTION qi_volume(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                          p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                          p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                          p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, studies bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.studies
    FROM (
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp, count(*) AS studies
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;

-- Studies received per ISO weekday (1 = Monday) and local hour of day.
CREATE FUNCTION qi_volume_heatmap(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                  p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                  p_rule text[] DEFAULT NULL)
RETURNS TABLE (isodow integer, hour integer, studies bigint)
LANGUAGE sql STABLE AS $$
    SELECT s.received_isodow, s.received_hour, count(*)
    FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

-- One row per local day: volumes, outcomes, stage percentiles and SLA compliance.
CREATE FUNCTION qi_daily_summary(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
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

-- Let the read-only Grafana role read the public views (when the role exists already;
-- core.qi.grant_read_access repeats this for a role created later).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grafana_ro') THEN
        GRANT SELECT ON qi_settings, qi_study, qi_delivery, qi_attempt TO grafana_ro;
    END IF;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION qi_daily_summary, qi_volume_heatmap, qi_volume, qi_ai_outcomes, qi_top_errors,
    qi_attempt_failures, qi_delivery_times, qi_delivery_outcomes, qi_study_outcomes, qi_sla_compliance,
    qi_stage_histogram, qi_stage_stats, qi_filtered_attempts, qi_filtered_deliveries,
    qi_filtered_studies, qi_wants, qi_group_keys, qi_bucket;
DROP VIEW qi_attempt, qi_delivery, qi_study;
DROP FUNCTION qi_rebuild, qi_refresh;
DROP TRIGGER qi_dirty_ins ON studies;
DROP TRIGGER qi_dirty_upd ON studies;
DROP TRIGGER qi_dirty_del ON studies;
DROP TRIGGER qi_dirty_ins ON series;
DROP TRIGGER qi_dirty_upd ON series;
DROP TRIGGER qi_dirty_del ON series;
DROP TRIGGER qi_dirty_ins ON routing_jobs;
DROP TRIGGER qi_dirty_upd ON routing_jobs;
DROP TRIGGER qi_dirty_del ON routing_jobs;
DROP FUNCTION qi_mark_dirty;
DROP TABLE qi_dirty, qi_delivery_fact, qi_study_fact;
DROP VIEW qi_delivery_live, qi_study_live, qi_send;
DROP INDEX events_outcome_idx, job_series_resend_idx;
DROP FUNCTION qi_seconds;
DROP TABLE qi_settings;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
