"""Per-day delivery histograms, AI flags and attempt counts: the Turnaround, AI round trip and Failures pages over a year without reading every row.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

Issue 19 goal 3, what 0012 left. qi_delivery_times sorted every delivery of the window
(per destination and purpose; 1.3M a year at 1M studies, ~2 s), qi_ai_outcomes and the
Failures page's qi_delivery_outcomes / qi_attempt_failures counted every row.

- qi_delivery_hist: per local day (of the study's first reception, in TZ), destination,
  purpose, metric (1 = to_destination_s, 2 = turnaround_s) and log-spaced bucket
  (qi_hist_bucket), the count and the values of the cached rows (qi_delivery_fact);
  qi_delivery_times_hist finds the buckets holding percentile_cont's ranks and sorts only
  those, as qi_stage_stats_hist does; qi_delivery_hist_month sums the counts per calendar
  month, so that a year's ranks add a dozen months. qi_delivery_cube: deliveries per day, destination,
  purpose and outcome (qi_delivery_outcomes, and qi_delivery_times' n). Statement
  triggers on qi_delivery_fact keep both in step, as 0012's do on qi_study_fact.
- qi_ai_day: studies per day by ai_route / sent / with a result (filled with 0012's
  tables by qi_stage_hist_sync); late results are counted from 0012's round-trip
  histogram, the sent studies without a result (their state depends on now()) through
  0012's partial index qi_study_fact_open_rt_idx.
- qi_attempt_day: finished send attempts per local day of the attempt, destination and
  outcome. Events are written once, so statement triggers on events add signed rows
  (never updating a shared row: workers do not wait on each other) and qi_refresh sums
  them (qi_attempt_day_compact).

0012's qi_hist_delta and qi_cube_delta (and the new deltas) run their dirty-study part only
when qi_dirty has rows and their partial-day part only when the window has partial days:
planning the live views for nothing cost tens of ms per call at 1M studies.

All of them answer only without filters and groups and over windows of at least 60 days
(qi_hist_long): over shorter ones reading the rows is as fast. Same function names and
result shapes; exactness: tests/integration/test_qi_percentiles.py.
"""

from alembic import op

from core import schema_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

LOADS_DB_SQL = True

TABLES = """
CREATE TABLE qi_delivery_hist (
    day         date     NOT NULL,
    destination text     NOT NULL,
    purpose     text     NOT NULL,
    metric      smallint NOT NULL,
    bucket      integer  NOT NULL,
    n           integer  NOT NULL,
    vals        double precision[] NOT NULL,
    PRIMARY KEY (day, destination, purpose, metric, bucket)
) WITH (toast_tuple_target = 128);
-- as qi_stage_hist: the values out of line, read for a few buckets only
ALTER TABLE qi_delivery_hist ALTER COLUMN vals SET STORAGE EXTERNAL;
CREATE INDEX qi_delivery_hist_bucket_idx ON qi_delivery_hist (destination, purpose, metric, bucket, day);
-- the same counts summed per calendar month (kept by qi_delivery_hist_fill)
CREATE TABLE qi_delivery_hist_month (
    month       date     NOT NULL,
    destination text     NOT NULL,
    purpose     text     NOT NULL,
    metric      smallint NOT NULL,
    bucket      integer  NOT NULL,
    n           bigint   NOT NULL,
    PRIMARY KEY (month, destination, purpose, metric, bucket)
);

CREATE TABLE qi_delivery_cube (
    day         date    NOT NULL,
    destination text    NOT NULL,
    purpose     text    NOT NULL,
    outcome     text    NOT NULL,
    n           integer NOT NULL
);
CREATE INDEX qi_delivery_cube_day_idx ON qi_delivery_cube (day);

CREATE TABLE qi_ai_day (
    day       date    NOT NULL,
    ai_route  boolean,
    ai_sent   boolean NOT NULL,
    ai_result boolean NOT NULL,
    n         integer NOT NULL
);
CREATE INDEX qi_ai_day_day_idx ON qi_ai_day (day);

-- signed counts, summed by qi_attempt_day_compact
CREATE TABLE qi_attempt_day (
    day         date   NOT NULL,
    destination text,
    outcome     text   NOT NULL,
    n           bigint NOT NULL
);
CREATE INDEX qi_attempt_day_day_idx ON qi_attempt_day (day);
"""

TRIGGERS = """
CREATE TRIGGER qi_delivery_hist_ins AFTER INSERT ON qi_delivery_fact
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
CREATE TRIGGER qi_delivery_hist_upd AFTER UPDATE ON qi_delivery_fact
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
CREATE TRIGGER qi_delivery_hist_del AFTER DELETE ON qi_delivery_fact
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
CREATE TRIGGER qi_delivery_hist_trunc AFTER TRUNCATE ON qi_delivery_fact
    FOR EACH STATEMENT EXECUTE FUNCTION qi_delivery_hist_sync();
CREATE TRIGGER qi_delivery_hist_tz AFTER UPDATE OF tz ON qi_settings
    FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_delivery_hist_sync();
CREATE TRIGGER qi_attempt_day_ins AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
CREATE TRIGGER qi_attempt_day_upd AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
CREATE TRIGGER qi_attempt_day_del AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
CREATE TRIGGER qi_attempt_day_trunc AFTER TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION qi_attempt_day_sync();
CREATE TRIGGER qi_attempt_day_tz AFTER UPDATE OF tz ON qi_settings
    FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_attempt_day_sync();
SELECT qi_delivery_hist_fill(NULL);
SELECT qi_ai_day_fill(NULL);
SELECT qi_attempt_day_fill();
"""

# 0012's triggers (0012_qi_stage_hist.py TRIGGERS), when 0012 was not the newest loading
# migration at its upgrade and so could not create them.
STAGE_HIST_TRIGGERS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'qi_stage_hist_ins'
                   AND tgrelid = 'qi_study_fact'::regclass) THEN
        CREATE TRIGGER qi_stage_hist_ins AFTER INSERT ON qi_study_fact
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_upd AFTER UPDATE ON qi_study_fact
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_del AFTER DELETE ON qi_study_fact
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_trunc AFTER TRUNCATE ON qi_study_fact
            FOR EACH STATEMENT EXECUTE FUNCTION qi_stage_hist_sync();
        CREATE TRIGGER qi_stage_hist_tz AFTER UPDATE OF tz ON qi_settings
            FOR EACH ROW WHEN (OLD.tz IS DISTINCT FROM NEW.tz) EXECUTE FUNCTION qi_stage_hist_sync();
        PERFORM qi_stage_hist_fill(NULL);
        PERFORM qi_study_cube_fill(NULL);
    END IF;
END $$;
"""

# What 0012 left (db/sql at 0013), restored by the downgrade.
OLD_DELIVERY_TIMES = r"""
-- Per destination (and purpose): time from ready (stable for the AI) and from first
-- reception until that destination's required sends all succeeded.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_delivery_times(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
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
"""

OLD_DELIVERY_OUTCOMES = r"""
-- Per destination (and purpose): outcomes of (study, destination) sends; cancelled sends
-- are left out of the denominator.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_delivery_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'all',
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
"""

OLD_AI_OUTCOMES = r"""
-- AI results: rates over studies sent to the AI.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_ai_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
"""

OLD_ATTEMPT_FAILURES = r"""
-- Send attempts by the time they finished: failed / finished attempts, per destination
-- (p_by_destination false: one row per bucket, destination 'all').
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_attempt_failures(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
"""

OLD_STAGE_HIST_SYNC = r"""
-- Trigger function of qi_stage_hist_ins / _upd / _del / _trunc on qi_study_fact and
-- qi_stage_hist_tz on qi_settings (migration 0012): recomputes the histograms
-- (qi_stage_hist) and the per-day study counts (qi_study_cube) of the
-- local days whose cached rows a statement changed, or all of them when TZ changed or
-- the cache was truncated. The worker's writes never reach it: they only mark studies
-- dirty; the cache (and so the histograms) changes in qi_refresh / qi_rebuild.
CREATE OR REPLACE FUNCTION qi_stage_hist_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    days date[];
BEGIN
    IF TG_TABLE_NAME = 'qi_settings' OR TG_OP = 'TRUNCATE' THEN
        PERFORM qi_stage_hist_fill(NULL);
        PERFORM qi_study_cube_fill(NULL);
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM old_rows r;
    ELSE
        SELECT array_agg(DISTINCT (r.t AT TIME ZONE v_tz)::date) INTO days
        FROM (SELECT o.first_received_at AS t FROM old_rows o UNION ALL SELECT n.first_received_at FROM new_rows n) r;
    END IF;
    IF days IS NOT NULL THEN
        PERFORM qi_stage_hist_fill(days);
        PERFORM qi_study_cube_fill(days);
    END IF;
    RETURN NULL;
END $$;
"""

OLD_REFRESH = r"""
-- Recompute up to p_limit dirty studies; returns how many. Concurrent callers skip.
-- (core.qi.refresh; the public views are current whether or not it ran.)
CREATE OR REPLACE FUNCTION qi_refresh(p_limit integer DEFAULT 20000) RETURNS integer
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
"""

OLD_HIST_DELTA = r"""
-- What qi_stage_hist lacks for an exact answer over [p_from, p_to), as signed single
-- values (day, stage, bucket, sgn, v): the histograms hold every cached row, dirty
-- studies' stale ones included, and only whole local days. So: -1 for each cached value
-- of a dirty study on a whole day of the window, +1 for each live value of a dirty study
-- on such a day (qi_study reads those live too), and +1 for each value of qi_study on the
-- partial days at the window's ends (none when the window is whole days, as core.qi's).
-- Small while qi_refresh runs (a few dirty studies). SECURITY DEFINER: it reads the
-- cache and the live definition, which grafana_ro may not read; grafana_ro may call the
-- aggregates (and read the per-day tables, which hold counts and durations only).
-- plpgsql, so that its query is planned with the window's values (custom plans, as
-- core.qi asks): a SECURITY DEFINER SQL function is planned for any window. A partial day lies within 26 hours
-- of the window's start or end (no local day is longer than 25 hours): only those
-- ranges of qi_study are read, and the local day decides.
CREATE OR REPLACE FUNCTION qi_hist_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, stage smallint, hb integer, sgn integer, v double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT r.day, x.stage, qi_hist_bucket(x.v), r.sgn, x.v
    FROM qi_hist_days(p_from, p_to) w
    CROSS JOIN qi_settings q
    CROSS JOIN LATERAL (
        SELECT (f.first_received_at AT TIME ZONE q.tz)::date AS day, -1 AS sgn, f.wait_stable_s, f.to_ai_s,
               f.ai_round_trip_s, f.result_settle_s, f.to_destinations_s, f.turnaround_s
        FROM qi_study_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        UNION ALL
        SELECT (l.first_received_at AT TIME ZONE q.tz)::date, 1, l.wait_stable_s, l.to_ai_s,
               l.ai_round_trip_s, l.result_settle_s, l.to_destinations_s, l.turnaround_s
        FROM qi_study_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
    ) r
    CROSS JOIN LATERAL (VALUES (1::smallint, r.wait_stable_s), (2::smallint, r.to_ai_s),
                               (3::smallint, r.ai_round_trip_s), (4::smallint, r.result_settle_s),
                               (5::smallint, r.to_destinations_s), (6::smallint, r.turnaround_s)) AS x (stage, v)
    WHERE r.day BETWEEN w.d1 AND w.d2 AND x.v IS NOT NULL
    UNION ALL
    SELECT s.received_day, x.stage, qi_hist_bucket(x.v), 1, x.v
    FROM qi_hist_days(p_from, p_to) w
    JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                   AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
    CROSS JOIN LATERAL (VALUES (1::smallint, s.wait_stable_s), (2::smallint, s.to_ai_s),
                               (3::smallint, s.ai_round_trip_s), (4::smallint, s.result_settle_s),
                               (5::smallint, s.to_destinations_s), (6::smallint, s.turnaround_s)) AS x (stage, v)
    WHERE s.received_day NOT BETWEEN w.d1 AND w.d2 AND x.v IS NOT NULL;
END $$;
"""

OLD_CUBE_DELTA = r"""
-- What qi_study_cube lacks for exact counts over [p_from, p_to), as signed single studies,
-- as qi_hist_delta does for the histograms: -1 for each cached row of a dirty study on a
-- whole day of the window, +1 for its live row, +1 for each study of qi_study on the
-- partial days at the window's ends. SECURITY DEFINER, as qi_hist_delta: see there.
CREATE OR REPLACE FUNCTION qi_cube_delta(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, hour integer, modality text, source_aet text, routed boolean, outcome text, sgn integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT (r.t AT TIME ZONE q.tz)::date, EXTRACT(hour FROM r.t AT TIME ZONE q.tz)::integer,
           r.modality, r.source_aet, r.routed, r.outcome, r.sgn
    FROM qi_hist_days(p_from, p_to) w
    CROSS JOIN qi_settings q
    CROSS JOIN LATERAL (
        SELECT f.first_received_at AS t, f.modality, f.source_aet, f.routed, f.outcome, -1 AS sgn
        FROM qi_study_fact f WHERE f.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
        UNION ALL
        SELECT l.first_received_at, l.modality, l.source_aet, l.routed, l.outcome, 1
        FROM qi_study_live l WHERE l.study_id IN (SELECT dd.study_id FROM qi_dirty dd)
    ) r
    WHERE (r.t AT TIME ZONE q.tz)::date BETWEEN w.d1 AND w.d2
    UNION ALL
    SELECT s.received_day, s.received_hour, s.modality, s.source_aet, s.routed, s.outcome, 1
    FROM qi_hist_days(p_from, p_to) w
    JOIN qi_study s ON s.first_received_at >= p_from AND s.first_received_at < p_to
                   AND (s.first_received_at < p_from + interval '26 hours' OR s.first_received_at >= p_to - interval '26 hours')
    WHERE s.received_day NOT BETWEEN w.d1 AND w.d2;
END $$;
"""

DOWNGRADE = """
DROP TRIGGER qi_delivery_hist_ins ON qi_delivery_fact;
DROP TRIGGER qi_delivery_hist_upd ON qi_delivery_fact;
DROP TRIGGER qi_delivery_hist_del ON qi_delivery_fact;
DROP TRIGGER qi_delivery_hist_trunc ON qi_delivery_fact;
DROP TRIGGER qi_delivery_hist_tz ON qi_settings;
DROP TRIGGER qi_attempt_day_ins ON events;
DROP TRIGGER qi_attempt_day_upd ON events;
DROP TRIGGER qi_attempt_day_del ON events;
DROP TRIGGER qi_attempt_day_trunc ON events;
DROP TRIGGER qi_attempt_day_tz ON qi_settings;
DROP FUNCTION qi_delivery_times_hist(timestamptz, timestamptz, text);
DROP FUNCTION qi_ai_outcomes_hist(timestamptz, timestamptz, text);
DROP FUNCTION qi_delivery_cube_rows(timestamptz, timestamptz);
DROP FUNCTION qi_delivery_delta(timestamptz, timestamptz);
DROP FUNCTION qi_ai_delta(timestamptz, timestamptz);
DROP FUNCTION qi_hist_long(timestamptz, timestamptz);
DROP FUNCTION qi_delivery_hist_sync();
DROP FUNCTION qi_delivery_hist_fill(date[]);
DROP FUNCTION qi_ai_day_fill(date[]);
DROP FUNCTION qi_attempt_day_sync();
DROP FUNCTION qi_attempt_day_fill();
DROP FUNCTION qi_attempt_day_compact();
DROP TABLE qi_delivery_hist;
DROP TABLE qi_delivery_hist_month;
DROP TABLE qi_delivery_cube;
DROP TABLE qi_ai_day;
DROP TABLE qi_attempt_day;
"""


def upgrade() -> None:
    op.execute(TABLES)
    schema_sql.load_in_migration(revision)
    # Triggers need the db/sql functions, which only the newest loading migration creates
    # (schema_sql.is_newest_loader): a database upgraded from before 0012 gets 0012's
    # triggers here, and a later loading migration must likewise create these when missing.
    if schema_sql.is_newest_loader(revision):
        op.execute(STAGE_HIST_TRIGGERS)
        op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute(OLD_DELIVERY_TIMES)
    op.execute(OLD_DELIVERY_OUTCOMES)
    op.execute(OLD_AI_OUTCOMES)
    op.execute(OLD_ATTEMPT_FAILURES)
    op.execute(OLD_STAGE_HIST_SYNC)
    op.execute(OLD_REFRESH)
    op.execute(OLD_HIST_DELTA)
    op.execute(OLD_CUBE_DELTA)
    op.execute(DOWNGRADE)
