"""Bulk synthetic history for the QI benchmarks and tests: N finished studies, set-based.

Why not the pipeline: the real pipeline (Orthanc + worker) records a few studies a
second, so a million studies can only be written set-based, with generate_series in
the server, into the staging tables of core.recorder.bulk_import, which moves them
into the core tables. The rows mimic what the recorder's per-event functions write (same tables, same event
types, same job states), with realistic shapes: a diurnal and weekly volume curve in
TZ, log-normal stage durations, retried and dead jobs, AI results that are late or
never come. Every time is a whole second, as the worker records them (Orthanc's times
have whole seconds; core.orthanc_client.parse_orthanc_time truncates job times).
The writer rebuilds the QI caches at the end (`qi_rebuild()`).

Ids are derived from the study number (series 5*i+k, jobs 4*i+k), so the script
needs an empty database: it refuses to run on one that has studies unless --reset.

    .venv/bin/python bench/seed.py --url postgresql://... --studies 1000000 --days 730
    (bench/seed.py runs this module's main)
"""

# ruff: noqa: S608 - bulk SQL built from constants in this file; values are bound parameters

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import NullPool, create_engine, text

from core import recorder

# Box-Muller normal deviate from two uniforms (PostgreSQL 15 has no random_normal()).
NORMAL = "(sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))"

ERRORS = (
    "Error in the network protocol (DICOM association rejected by LPCHROUTER)",
    "Error in the network protocol (connection refused)",
    "Timeout in the DICOM network layer",
    "Error in the network protocol (peer aborted the association)",
    "Bad file format (cannot send compressed transfer syntax)",
)

STEPS: list[tuple[str, str]] = [
    ("plan", f"""
        CREATE UNLOGGED TABLE bench_plan AS
        WITH base AS (
            SELECT i,
                   random() AS u_route, random() AS u_mod, random() AS u_src, random() AS u_hour,
                   random() AS u_wkend, random() AS u_ai, random() AS u_miss,
                   (%(start)s::date + floor(random() * %(days)s)::int) AS d
            FROM generate_series(1, %(n)s) AS i
        ), local AS (
            SELECT b.*,
                   -- weekends carry about half the weekday volume
                   CASE WHEN EXTRACT(isodow FROM b.d) >= 6 AND b.u_wkend < 0.5
                        THEN b.d - 2 ELSE b.d END AS day,
                   -- 75 %% of studies between 07:00 and 19:00 local time
                   CASE WHEN b.u_hour < 0.75 THEN 7 * 3600 + floor(random() * 12 * 3600)
                        ELSE floor(random() * 24 * 3600) END AS sec
            FROM base b
        ), timed AS (
            SELECT l.*, (l.day + make_interval(secs => l.sec)) AT TIME ZONE %(tz)s AS recv FROM local l
        )
        SELECT row_number() OVER (ORDER BY l.recv) AS i,  -- ids follow arrival, as with the worker
               CASE WHEN l.u_route < 0.60 THEN 'ai' WHEN l.u_route < 0.85 THEN 'direct' ELSE 'none' END AS route,
               l.recv,
               CASE WHEN l.u_mod < 0.5 THEN 'CR' WHEN l.u_mod < 0.8 THEN 'DX'
                    WHEN l.u_mod < 0.9 THEN 'CT' ELSE 'MR' END AS modality,
               'MOD' || (1 + floor(l.u_src * 6)::int) AS source_aet,
               1 + floor(random() * 2)::int AS n_orig,
               round(5 + 25 * random()) AS wait_s,
               -- AI send: 1 %% dead after 8 attempts, 3 %% one retry
               CASE WHEN l.u_ai < 0.01 THEN 2 WHEN l.u_ai < 0.04 THEN 1 ELSE 0 END AS ai_fail,
               round(exp(ln(8) + 0.7 * {NORMAL})) AS to_ai_s,
               -- AI round trip: log-normal around 7 min, 5 %% slow tail, 3 %% never
               CASE WHEN l.u_miss < 0.03 THEN NULL
                    WHEN l.u_miss < 0.08 THEN round(exp(ln(2400) + 0.5 * {NORMAL}))
                    ELSE round(exp(ln(420) + 0.5 * {NORMAL})) END AS rt_s,
               round(10 + 30 * random()) AS settle_s
        FROM timed l
    """),
    ("studies", """
        INSERT INTO import_studies (id, study_uid, orthanc_id, patient_id, accession_number, description,
                             study_date, source_aet, first_received_at, last_received_at, stable_at,
                             last_stable_at, status, created_at, updated_at)
        SELECT p.i, '1.2.826.0.1.3680043.10.999.' || p.i, md5('study' || p.i), 'PAT' || (p.i %% 50000),
               'ACC' || p.i,
               CASE p.route WHEN 'ai' THEN 'XR EXTREMITY BILATERAL BONE LENGTH' ELSE 'XR CHEST' END,
               to_char(p.recv AT TIME ZONE %(tz)s, 'YYYYMMDD'), p.source_aet, p.recv,
               p.recv + make_interval(secs => 2 * (p.n_orig - 1)),
               p.recv + make_interval(secs => p.wait_s), p.recv + make_interval(secs => p.wait_s),
               'received', p.recv, p.recv
        FROM bench_plan p
        ORDER BY p.i
    """),
    ("series", """
        INSERT INTO import_series (id, series_uid, orthanc_id, study_id, study_uid, kind, linked_by, sender_aet,
                            modality, description, series_number, instance_count, first_received_at,
                            last_received_at, stable_at, created_at)
        SELECT 5 * p.i + k, '1.2.826.0.1.3680043.10.999.' || p.i || '.' || k, md5('series' || p.i || '.' || k),
               p.i, '1.2.826.0.1.3680043.10.999.' || p.i, 'original', NULL, p.source_aet, p.modality,
               'original series ' || k, k::text, 2, p.recv + make_interval(secs => 2 * k),
               p.recv + make_interval(secs => 2 * k + 1), p.recv + make_interval(secs => p.wait_s), p.recv
        FROM bench_plan p, generate_series(0, 2) AS k
        WHERE k < p.n_orig
    """),
    ("ai_jobs", """
        INSERT INTO import_routing_jobs (id, study_id, purpose, destination, rule_name, payload, state, attempts,
                                  next_attempt_at, orthanc_job_id, last_error, created_at, started_at,
                                  finished_at, updated_at)
        SELECT 4 * p.i, p.i, 'ai', 'MERCURE', 'bone_length_ai', 'study',
               CASE p.ai_fail WHEN 2 THEN 'dead' ELSE 'succeeded' END,
               CASE p.ai_fail WHEN 2 THEN 8 WHEN 1 THEN 2 ELSE 1 END,
               t.created, md5('job' || p.i),
               CASE p.ai_fail WHEN 2 THEN %(err0)s END,
               t.created, t.created, t.finished, t.finished
        FROM bench_plan p
        CROSS JOIN LATERAL (
            SELECT p.recv + make_interval(secs => p.wait_s) AS created,
                   p.recv + make_interval(secs => p.wait_s + p.to_ai_s
                        + CASE p.ai_fail WHEN 1 THEN 10 WHEN 2 THEN 1800 ELSE 0 END) AS finished
        ) t
        WHERE p.route = 'ai'
    """),
    ("ai_results", """
        INSERT INTO import_series (id, series_uid, orthanc_id, study_id, study_uid, kind, linked_by, sender_aet,
                            modality, description, series_number, instance_count, first_received_at,
                            last_received_at, stable_at, created_at)
        SELECT 5 * p.i + 3 + k, '1.2.826.0.1.3680043.10.999.' || p.i || '.ai' || k, md5('ai' || p.i || '.' || k),
               p.i, '1.2.826.0.1.3680043.10.999.' || p.i, 'ai_result', 'study_uid', 'MERCURE',
               CASE k WHEN 0 THEN 'OT' ELSE 'SR' END,
               CASE k WHEN 0 THEN 'QA VISUALIZATION' ELSE 'BONE LENGTH REPORT' END,
               (900 + k)::text, 1, r.at + make_interval(secs => 3 * k), r.at + make_interval(secs => 3 * k),
               r.at + make_interval(secs => p.settle_s), r.at
        FROM bench_plan p
        JOIN import_routing_jobs j ON j.id = 4 * p.i AND j.state = 'succeeded'
        CROSS JOIN LATERAL (SELECT j.finished_at + make_interval(secs => p.rt_s) AS at) r
        CROSS JOIN generate_series(0, 1) AS k
        WHERE p.route = 'ai' AND p.rt_s IS NOT NULL
    """),
    ("delivery_jobs", f"""
        INSERT INTO import_routing_jobs (id, study_id, purpose, destination, rule_name, payload, state, attempts,
                                  next_attempt_at, orthanc_job_id, last_error, created_at, started_at,
                                  finished_at, updated_at)
        SELECT 4 * d.study_id + d.k, d.study_id, 'delivery', d.dest, d.rule, d.payload,
               CASE WHEN d.u < 0.005 THEN 'dead' ELSE 'succeeded' END,
               CASE WHEN d.u < 0.005 THEN 8 WHEN d.u < 0.025 THEN 2 ELSE 1 END,
               d.created, md5('job' || d.study_id || '.' || d.k),
               CASE WHEN d.u < 0.005 THEN (ARRAY[%(err0)s, %(err1)s, %(err2)s])[1 + (d.study_id %% 3)::int] END,
               d.created, d.created,
               d.created + make_interval(secs => round(exp(ln(20) + 0.8 * {NORMAL}))
                    + CASE WHEN d.u < 0.005 THEN 1800 WHEN d.u < 0.025 THEN 10 ELSE 0 END),
               d.created
        FROM (
            SELECT s.study_id, x.k, x.dest, x.rule, x.payload, random() AS u,
                   max(s.stable_at) AS created
            FROM import_series s
            CROSS JOIN LATERAL (VALUES (1, 'LPCHROUTER', 'qa_visualization', 'ai_results', 3),
                                       (2, 'LPCHTROUTER', 'qa_visualization', 'ai_results', 3),
                                       (3, 'MODLINK', 'ai_sr', 'ai_results', 4)) AS x (k, dest, rule, payload, sk)
            WHERE s.kind = 'ai_result' AND s.id = 5 * s.study_id + x.sk
            GROUP BY s.study_id, x.k, x.dest, x.rule, x.payload
            UNION ALL
            SELECT p.i, 1, 'LPCHROUTER', 'direct_pacs', 'study', random(),
                   p.recv + make_interval(secs => p.wait_s)
            FROM bench_plan p WHERE p.route = 'direct'
        ) d
    """),
    ("job_series", """
        INSERT INTO import_job_series (job_id, series_id, destination, is_resend)
        SELECT j.id, s.id, j.destination, false
        FROM import_routing_jobs j
        JOIN import_series s ON s.study_id = j.study_id
        WHERE (j.id %% 4 = 0 AND s.kind = 'original')
           OR (j.purpose = 'delivery' AND j.rule_name = 'direct_pacs' AND s.kind = 'original')
           OR (j.rule_name = 'qa_visualization' AND s.id = 5 * s.study_id + 3)
           OR (j.rule_name = 'ai_sr' AND s.id = 5 * s.study_id + 4)
    """),
    ("status", """
        UPDATE import_studies s SET status = CASE
            WHEN j.dead > 0 THEN 'failed'
            WHEN j.ai > 0 AND COALESCE(r.results, 0) = 0 THEN 'ai_overdue'
            WHEN j.delivered > 0 THEN 'delivered'
            ELSE 'unrouted' END
        FROM (
            SELECT study_id,
                   count(*) FILTER (WHERE state = 'dead') AS dead,
                   count(*) FILTER (WHERE purpose = 'ai') AS ai,
                   count(*) FILTER (WHERE purpose = 'delivery' AND state = 'succeeded') AS delivered
            FROM import_routing_jobs GROUP BY study_id
        ) j
        LEFT JOIN (
            SELECT study_id, count(*) AS results FROM import_series WHERE kind = 'ai_result' GROUP BY study_id
        ) r ON r.study_id = j.study_id
        WHERE s.id = j.study_id
    """),
    ("events_series", """
        INSERT INTO import_events (study_id, series_id, type, at, detail)
        SELECT s.study_id, s.id, CASE s.kind WHEN 'original' THEN 'received' ELSE 'ai_result_received' END,
               s.first_received_at, '{}'::jsonb
        FROM import_series s
        UNION ALL
        SELECT s.study_id, s.id, 'ai_result_stable', s.stable_at, '{}'::jsonb
        FROM import_series s WHERE s.kind = 'ai_result'
        UNION ALL
        SELECT st.id, NULL, 'stable', st.stable_at, '{}'::jsonb FROM import_studies st
        UNION ALL
        SELECT p.i, NULL, 'unrouted', p.recv + make_interval(secs => p.wait_s), '{}'::jsonb
        FROM bench_plan p WHERE p.route = 'none'
    """),
    ("events_jobs", """
        INSERT INTO import_events (study_id, job_id, type, at, destination, detail)
        SELECT j.study_id, j.id, 'rule_matched', j.created_at, j.destination,
               jsonb_build_object('rule', j.rule_name)
        FROM import_routing_jobs j
        UNION ALL
        SELECT j.study_id, j.id, 'delivery_queued', j.created_at, j.destination,
               jsonb_build_object('purpose', j.purpose, 'rule', j.rule_name)
        FROM import_routing_jobs j
        UNION ALL
        SELECT j.study_id, j.id, 'delivery_started', j.created_at + make_interval(secs => 10 * (a - 1)),
               j.destination, jsonb_build_object('attempt', a)
        FROM import_routing_jobs j, generate_series(1, j.attempts) AS a
        UNION ALL
        SELECT j.study_id, j.id,
               CASE WHEN j.state = 'dead' AND a = j.attempts THEN 'delivery_dead' ELSE 'delivery_failed' END,
               j.created_at + make_interval(secs => 10 * (a - 1) + 5), j.destination,
               jsonb_build_object('error', CASE WHEN j.state = 'dead' THEN j.last_error
                                                ELSE (ARRAY[%(err1)s, %(err2)s, %(err3)s, %(err4)s])[1 + (j.id %% 4)::int] END,
                                  'code', 9, 'attempt', a)
        FROM import_routing_jobs j, generate_series(1, j.attempts) AS a
        WHERE a < j.attempts OR j.state = 'dead'
        UNION ALL
        SELECT j.study_id, j.id, CASE j.purpose WHEN 'ai' THEN 'ai_sent' ELSE 'delivered' END, j.finished_at,
               j.destination, jsonb_build_object('instances', 2)
        FROM import_routing_jobs j WHERE j.state = 'succeeded'
    """),
    ("drop_plan", "DROP TABLE bench_plan"),
]


@contextmanager
def _step(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"  {name:<16}", end="", flush=True)
    yield
    print(f"{time.monotonic() - started:8.1f} s", flush=True)


def seed(url: str, studies: int, days: int, end: datetime, tz: str, reset: bool, seed_value: float) -> None:
    """Write `studies` studies received over `days` days before `end`, then rebuild the QI caches."""
    start = (end - timedelta(days=days)).date()
    params = {"n": studies, "days": days, "start": start, "tz": tz, **{f"err{i}": e for i, e in enumerate(ERRORS)}}
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT EXISTS (SELECT 1 FROM studies)")).scalar():
                if not reset:
                    sys.exit("the database has studies already: use an empty one, or --reset")
                recorder.clear_history(conn)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            conn.execute(text("DROP TABLE IF EXISTS bench_plan"))
            conn.execute(text("SELECT setseed(:s)"), {"s": seed_value})
            with recorder.bulk_import(conn):
                for name, sql in STEPS:
                    with _step(name):
                        conn.exec_driver_sql(sql, params)
                    if name == "job_series":
                        conn.exec_driver_sql("ANALYZE")
                print(f"  {'move in, QI':<16}", end="", flush=True)
                moved = time.monotonic()
            print(f"{time.monotonic() - moved:8.1f} s", flush=True)
        with engine.connect() as conn, _step("vacuum"):
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        with engine.connect() as conn:
            counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                      for t in ("studies", "series", "routing_jobs", "job_series", "events", "qi_study_fact")}
        print("  rows: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="libpq URL of an empty, migrated QI database")
    parser.add_argument("--studies", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=730, help="span of first_received_at before --end")
    parser.add_argument("--end", default=None, help="YYYY-MM-DD (default: yesterday, UTC)")
    parser.add_argument("--tz", default="America/Los_Angeles", help="time zone of the volume curve")
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() value in [-1, 1]")
    parser.add_argument("--reset", action="store_true", help="empty the tables first")
    args = parser.parse_args(argv)
    end = (datetime.fromisoformat(args.end).replace(tzinfo=UTC) if args.end
           else datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1))
    started = time.monotonic()
    print(f"seeding {args.studies:,} studies over {args.days} days up to {end.date()}")
    seed(args.url.replace("postgresql+psycopg://", "postgresql://"), args.studies, args.days, end,
         args.tz, args.reset, args.seed)
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
