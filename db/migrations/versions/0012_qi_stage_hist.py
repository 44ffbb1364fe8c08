"""Per-day histograms of the stage durations: exact percentiles over a year without reading every study.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

Issue 19 goal 3. qi_stage_stats and qi_stage_histogram sorted or binned every study of
the window (500k for a year at 1M studies, 1-3 s a page). qi_stage_hist keeps, per local
day in TZ, stage and log-spaced bucket (db/sql/qi_hist_bounds.sql), the count and the
values of the cached rows (qi_study_fact). Without filters or groups the two aggregates
sum the counts over the window, find the buckets that hold the ranks percentile_cont
needs, and sort only those buckets' values: the same numbers (docs/qi.md, "Exact
percentiles from per-day histograms"; tests/integration/test_qi_percentiles.py).

qi_study_cube counts the studies per local day and hour, modality, source, routed and
outcome: qi_study_outcomes, qi_volume (ungrouped, by modality or by source) and
qi_volume_heatmap answer from it without filters. qi_sla_compliance counts met and
breached studies with a value from the histograms and reads only the studies still
without one (three partial indexes) from qi_study.

Statement triggers on qi_study_fact recompute both tables for the days a statement
touched (qi_refresh, qi_rebuild and the loader's recaching all write there); a trigger on
qi_settings recomputes them all when TZ changes. The worker's writes are not touched:
they only mark studies dirty, and the aggregates correct for dirty studies
(db/sql/qi_hist_delta.sql).
"""

from alembic import op

from core import schema_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

LOADS_DB_SQL = True

TABLE = """
CREATE TABLE qi_stage_hist (
    day    date     NOT NULL,
    stage  smallint NOT NULL,
    bucket integer  NOT NULL,
    n      integer  NOT NULL,
    vals   double precision[] NOT NULL,
    PRIMARY KEY (day, stage, bucket)
) WITH (toast_tuple_target = 128);
-- the values are read for a few buckets only: out of line, so that summing the counts
-- over a year reads narrow rows
ALTER TABLE qi_stage_hist ALTER COLUMN vals SET STORAGE EXTERNAL;
CREATE INDEX qi_stage_hist_bucket_idx ON qi_stage_hist (stage, bucket, day);

CREATE TABLE qi_study_cube (
    day        date     NOT NULL,
    hour       smallint NOT NULL,
    modality   text,
    source_aet text,
    routed     boolean,
    outcome    text,
    n          integer  NOT NULL
);
CREATE INDEX qi_study_cube_day_idx ON qi_study_cube (day);

-- the studies whose SLA state depends on the clock (no value yet, SLA applies), read by
-- qi_sla_compliance_hist
CREATE INDEX qi_study_fact_open_ta_idx ON qi_study_fact (first_received_at)
    WHERE delivery_expected AND turnaround_s IS NULL;
CREATE INDEX qi_study_fact_open_rt_idx ON qi_study_fact (first_received_at)
    WHERE ai_sent_at IS NOT NULL AND ai_round_trip_s IS NULL AND ai_result_at IS NULL;
CREATE INDEX qi_study_fact_open_td_idx ON qi_study_fact (first_received_at)
    WHERE delivery_expected AND ready_at IS NOT NULL AND to_destinations_s IS NULL;
"""

TRIGGERS = """
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
SELECT qi_stage_hist_fill(NULL);
SELECT qi_study_cube_fill(NULL);
"""

# What 0011 left (db/sql at that revision), restored by the downgrade.
OLD_STAGE_STATS = r"""
-- count, p50, p90, p95 and max of each stage duration. Aggregated wide (one FILTERed
-- aggregate per stage, skipped when the stage is not asked for), then unpivoted: cheaper
-- than unpivoting every study first. Groups by the constant 'all' when p_group is 'none'
-- (the group qi_group_keys gives every study then), so PostgreSQL does not sort every
-- study by an unknown group key before the percentiles sort their own values.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_stage_stats(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
               CASE WHEN p_group = 'none' THEN 'all' ELSE g.grp END AS grp,
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
"""

OLD_STAGE_HISTOGRAM = r"""
-- Histogram of one stage: bins of p_bin_s seconds; values >= p_max_s share the last
-- bin (bin_end = Infinity).
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_stage_histogram(p_stage text, p_bin_s double precision, p_max_s double precision,
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
"""

OLD_STUDY_OUTCOMES = r"""
-- Study outcomes; rates are over routed studies (unrouted ones are counted, not rated).
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_study_outcomes(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
"""

OLD_VOLUME = r"""
-- Studies received per bucket and group.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_volume(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
"""

OLD_VOLUME_HEATMAP = r"""
-- Studies received per ISO weekday (1 = Monday) and local hour of day.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_volume_heatmap(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                             p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                             p_rule text[] DEFAULT NULL)
RETURNS TABLE (isodow integer, hour integer, studies bigint)
LANGUAGE sql STABLE AS $$
    SELECT s.received_isodow, s.received_hour, count(*)
    FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;
"""

OLD_SLA_COMPLIANCE = r"""
-- SLA compliance per metric: met / (met + breached); pending is shown, not counted.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_sla_compliance(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
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
"""

DOWNGRADE = """
DROP TRIGGER qi_stage_hist_ins ON qi_study_fact;
DROP TRIGGER qi_stage_hist_upd ON qi_study_fact;
DROP TRIGGER qi_stage_hist_del ON qi_study_fact;
DROP TRIGGER qi_stage_hist_trunc ON qi_study_fact;
DROP TRIGGER qi_stage_hist_tz ON qi_settings;
DROP FUNCTION qi_stage_stats_hist(timestamptz, timestamptz, text, text[]);
DROP FUNCTION qi_sla_compliance_hist(timestamptz, timestamptz, text);
DROP FUNCTION qi_stage_histogram_hist(text, double precision, double precision, timestamptz, timestamptz);
DROP FUNCTION qi_cube_rows(timestamptz, timestamptz);
DROP FUNCTION qi_cube_delta(timestamptz, timestamptz);
DROP FUNCTION qi_hist_delta(timestamptz, timestamptz);
DROP FUNCTION qi_hist_days(timestamptz, timestamptz);
DROP FUNCTION qi_hist_usable(timestamptz, timestamptz, text, text[], text[], text[], text[]);
DROP FUNCTION qi_stage_hist_sync();
DROP FUNCTION qi_stage_hist_fill(date[]);
DROP FUNCTION qi_study_cube_fill(date[]);
DROP FUNCTION qi_hist_bucket(double precision);
DROP FUNCTION qi_hist_bounds();
DROP FUNCTION qi_hist_stages();
DROP TABLE qi_stage_hist;
DROP TABLE qi_study_cube;
DROP INDEX qi_study_fact_open_ta_idx;
DROP INDEX qi_study_fact_open_rt_idx;
DROP INDEX qi_study_fact_open_td_idx;
"""


def upgrade() -> None:
    op.execute(TABLE)
    schema_sql.load_in_migration(revision)
    # the trigger functions exist here only when this migration loaded db/sql; else the
    # newest loading migration creates these triggers (0014_qi_delivery_hist.py)
    if schema_sql.is_newest_loader(revision):
        op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute(OLD_STAGE_STATS)
    op.execute(OLD_STAGE_HISTOGRAM)
    op.execute(OLD_STUDY_OUTCOMES)
    op.execute(OLD_VOLUME)
    op.execute(OLD_VOLUME_HEATMAP)
    op.execute(OLD_SLA_COMPLIANCE)
    op.execute(DOWNGRADE)
