"""QI benchmark: each QI page's queries, the per-study export, and the cache's write cost.

Run against a database filled by bench/seed.py (1M studies, ~15M events):

    .venv/bin/python bench/qi_bench.py --url postgresql://... [--repeat 20] [--days 30 90 365]

What is measured, and why:
- pages: the exact core.qi calls each QI page makes on a render (PAGES below mirrors
  app/pages/qi_*.py), in one transaction like the page, repeated; p50/p95/max of the
  page total. Each repetition shifts the window by a day, so PostgreSQL cannot answer
  from a single cached plan/result, as a user moving through dates would see.
- export: the per-study CSV of the most recent days holding >= --export-rows studies,
  in a child process, reporting seconds and peak RSS (flat memory = streaming). A
  10x smaller export is run too, so the RSS of both can be compared.
- refresh: recomputing 1000 dirty studies (qi_refresh), and the worker-side cost of
  the dirty-marking triggers (recorder calls with and without them, rolled back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import Connection, text  # noqa: E402

from core import qi, recorder  # noqa: E402
from core.db import make_engine  # noqa: E402
from core.qi import QiFilter  # noqa: E402

Query = Callable[[Connection, QiFilter, ZoneInfo], object]


def _turnaround(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.stage_stats(conn, f, z, grain="all")
    qi.stage_histogram(conn, f, z, stage="turnaround", bin_s=150, max_s=5400)
    qi.stage_stats(conn, f, z, grain="day", stages=["turnaround"])
    qi.sla_compliance(conn, f, z, grain="all")
    qi.delivery_times(conn, f, z)


def _ai(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.stage_stats(conn, f, z, grain="all", stages=list(qi.AI_STAGES))
    qi.stage_histogram(conn, f, z, stage="ai_round_trip", bin_s=70, max_s=2700)
    qi.stage_stats(conn, f, z, grain="day", stages=["ai_round_trip"])
    qi.ai_outcomes(conn, f, z, grain="all")
    qi.ai_outcomes(conn, f, z, grain="day")
    qi.ai_overdue_studies(conn, f, z, limit=200)


def _failures(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.study_outcomes(conn, f, z, grain="day")
    qi.delivery_outcomes(conn, f, z)
    qi.attempt_failures(conn, f, z, grain="day")
    qi.top_errors(conn, f, z, limit=10)


def _volumes(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.volume_heatmap(conn, f, z)
    qi.volume(conn, f, z, grain="day", group="modality")
    qi.volume(conn, f, z, grain="day", group="source_aet")
    qi.study_outcomes(conn, f, z, grain="day")


def _sla(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.sla_compliance(conn, f, z, grain="all")
    qi.sla_compliance(conn, f, z, grain="day")


def _filters(conn: Connection, f: QiFilter, z: ZoneInfo) -> None:
    qi.qi_settings(conn)
    qi.filter_options(conn, f, z)


PAGES: dict[str, Query] = {
    "turnaround": _turnaround, "ai_round_trip": _ai, "failures": _failures, "volumes": _volumes, "sla": _sla,
    # every page also renders the shared sidebar (its options are cached 5 min per range)
    "sidebar (filter options)": _filters,
}


def bench_pages(url: str, zone: ZoneInfo, end: date, days: int, repeat: int) -> dict[str, dict[str, float]]:
    engine = make_engine(url, pool_size=1)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, page in PAGES.items():
            timings = []
            for i in range(repeat):
                last = end - timedelta(days=i)
                flt = QiFilter(last - timedelta(days=days - 1), last)
                with engine.connect() as conn, conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    started = time.perf_counter()
                    page(conn, flt, zone)
                    timings.append(time.perf_counter() - started)
            results[name] = {"p50": statistics.median(timings), "p95": float(np.percentile(timings, 95)), "max": max(timings)}
    finally:
        engine.dispose()
    return results


EXPORT_CHILD = """
import json, resource, sys, time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo
sys.path.insert(0, {root!r})
from core import reports
from core.db import make_engine
from core.qi import QiFilter
engine = make_engine({url!r})
started = time.perf_counter()
with engine.connect() as conn, conn.begin():
    result = reports.export_studies(conn, QiFilter(date.fromisoformat({start!r}), date.fromisoformat({end!r})),
                                    ZoneInfo({tz!r}), {fmt!r}, Path({out!r}))
seconds = time.perf_counter() - started
print(json.dumps({{"rows": result.rows, "seconds": seconds,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def export_range(url: str, zone: ZoneInfo, end: date, rows: int) -> tuple[date, date, int]:
    """The most recent days (ending at `end`) that hold at least `rows` studies."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            upper = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=zone)
            edge = conn.execute(text("SELECT first_received_at FROM qi_study_fact WHERE first_received_at < :u "
                                     "ORDER BY first_received_at DESC OFFSET :n LIMIT 1"),
                                {"u": upper, "n": rows - 1}).scalar_one()
            start = edge.astimezone(zone).date()
            flt = QiFilter(start, end)
            p_from, p_to = flt.bounds(zone)
            count = conn.execute(text("SELECT count(*) FROM qi_study WHERE first_received_at >= :a "
                                      "AND first_received_at < :b"), {"a": p_from, "b": p_to}).scalar_one()
    finally:
        engine.dispose()
    return start, end, int(count)


def bench_export(url: str, zone: ZoneInfo, start: date, end: date, fmt: str, out: Path) -> dict[str, float]:
    code = EXPORT_CHILD.format(root=str(ROOT), url=url, start=start.isoformat(), end=end.isoformat(),
                              tz=str(zone), fmt=fmt, out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_refresh(url: str, studies: int = 1000) -> dict[str, float]:
    """Mark the newest `studies` studies dirty, time qi_refresh; then the triggers' write cost."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE studies SET updated_at = now() WHERE id IN "
                              "(SELECT id FROM studies ORDER BY id DESC LIMIT :n)"), {"n": studies})
        with engine.begin() as conn:
            started = time.perf_counter()
            done = qi.refresh(conn, limit=studies)
            refresh_s = time.perf_counter() - started
        writes = {}
        for triggers in (True, False):
            with engine.connect() as conn:
                trans = conn.begin()
                if not triggers:
                    for table in ("studies", "series", "routing_jobs"):
                        conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))  # constant names
                writes[triggers] = _record_flows(conn, 200)
                trans.rollback()
    finally:
        engine.dispose()
    return {"refreshed": done, "refresh_s": refresh_s, "record_ms_per_study_with_triggers": writes[True] * 1000,
            "record_ms_per_study_without_triggers": writes[False] * 1000}


def _record_flows(conn: Connection, n: int) -> float:
    """Seconds per study for the recorder calls of a delivered AI study (about 20 statements)."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    for i in range(n):
        uid = f"9.9.9.{time.time_ns()}.{i}"
        study_id = recorder.upsert_study(conn, recorder.StudyInfo(study_uid=uid, accession_number=f"B{i}"),
                                         source_aet="BENCH", received_at=now)
        series_id, _ = recorder.upsert_series(
            conn, study_id, recorder.SeriesInfo(series_uid=f"{uid}.1", study_uid=uid, modality="CR",
                                                first_received_at=now), kind="original", linked_by=None)
        recorder.add_event(conn, study_id, "received", now, series_id=series_id)
        recorder.mark_series_stable(conn, series_id, now)
        recorder.mark_study_stable(conn, study_id, now)
        ai = recorder.queue_job(conn, study_id=study_id, purpose="ai", destination="MERCURE",
                                series_ids=[series_id], payload="study", rule_name="bench", at=now)
        assert ai is not None
        recorder.job_started(conn, ai, orthanc_job_id="b", at=now)
        recorder.job_succeeded(conn, ai, at=now, instances_sent=1)
        result_id, _ = recorder.upsert_series(
            conn, study_id, recorder.SeriesInfo(series_uid=f"{uid}.2", study_uid=uid, sender_aet="MERCURE",
                                                first_received_at=now), kind="ai_result", linked_by="study_uid")
        recorder.mark_series_stable(conn, result_id, now)
        job = recorder.queue_job(conn, study_id=study_id, purpose="delivery", destination="PACS",
                                 series_ids=[result_id], payload="ai_results", rule_name="bench", at=now)
        assert job is not None
        recorder.job_started(conn, job, orthanc_job_id="c", at=now)
        recorder.job_succeeded(conn, job, at=now, instances_sent=1)
    return (time.perf_counter() - started) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="QI benchmark (see the module docstring).")
    parser.add_argument("--url", required=True, help="SQLAlchemy or libpq URL of a seeded QI database")
    parser.add_argument("--tz", default="America/Los_Angeles")
    parser.add_argument("--end", default=None, help="last day of the page windows (default: newest study)")
    parser.add_argument("--days", type=int, nargs="+", default=[30, 90], help="page windows to time")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--export-rows", type=int, default=100_000)
    parser.add_argument("--skip-writes", action="store_true", help="do not time refresh and triggers")
    args = parser.parse_args(argv)
    url = args.url if "+psycopg" in args.url else args.url.replace("postgresql://", "postgresql+psycopg://", 1)
    zone = ZoneInfo(args.tz)
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608 - constant names
                  for t in ("studies", "series", "routing_jobs", "events", "qi_dirty")}
        newest = conn.execute(text("SELECT max(first_received_at) FROM qi_study_fact")).scalar_one()
        settings = dict(conn.execute(text("SHOW shared_buffers")).mappings().one())
    engine.dispose()
    end = date.fromisoformat(args.end) if args.end else newest.astimezone(zone).date()
    print(f"database: {', '.join(f'{k}={v:,}' for k, v in counts.items())}; shared_buffers={settings}")
    print(f"host: {os.cpu_count()} CPUs; windows ending {end} ({args.tz}); {args.repeat} renders each\n")
    for days in args.days:
        print(f"QI page queries, last {days} days (seconds per page render):")
        for name, r in bench_pages(url, zone, end, days, args.repeat).items():
            print(f"  {name:<26} p50 {r['p50']:.3f}  p95 {r['p95']:.3f}  max {r['max']:.3f}")
        print()
    start, stop, rows = export_range(url, zone, end, args.export_rows)
    out = Path("/tmp") / f"qi-bench-export-{os.getpid()}.csv"
    small_start, small_stop, small_rows = export_range(url, zone, end, max(1, args.export_rows // 10))
    try:
        small = bench_export(url, zone, small_start, small_stop, "csv", out)
        big = bench_export(url, zone, start, stop, "csv", out)
        size_mb = out.stat().st_size / 1e6
    finally:
        out.unlink(missing_ok=True)
    print(f"per-study CSV export {start}..{stop}: {big['rows']:,} rows ({size_mb:.0f} MB) in "
          f"{big['seconds']:.2f} s, peak RSS {big['maxrss_mb']:.0f} MB")
    print(f"per-study CSV export {small_start}..{small_stop}: {small['rows']:,} rows in {small['seconds']:.2f} s, "
          f"peak RSS {small['maxrss_mb']:.0f} MB")
    assert big["rows"] == rows and small["rows"] == small_rows
    if not args.skip_writes:
        r = bench_refresh(url)
        print(f"\nqi_refresh of {r['refreshed']} dirty studies: {r['refresh_s']:.2f} s")
        print(f"recorder, one delivered AI study (~20 statements): {r['record_ms_per_study_with_triggers']:.1f} ms "
              f"with the dirty-marking triggers, {r['record_ms_per_study_without_triggers']:.1f} ms without")


if __name__ == "__main__":
    main()
