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
- refresh: recomputing 1000 dirty studies (qi_refresh; with migration 0012 also without
  the triggers of the per-day tables, and their full recomputation), and the worker-side
  cost of the dirty-marking triggers (recorder calls with and without them, rolled back).
- --before DIR: the pages also with older definitions of some db/sql functions (installed
  in a schema qi_before, put first in the search_path), renders alternating, so that
  before and after are measured on the same data in one run.
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


def bench_pages(url: str, zone: ZoneInfo, end: date, days: int, repeat: int,
                variants: dict[str, str | None] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> page -> p50/p95/max. A variant is a search_path put before `public` for the
    page's transaction (None: as deployed); variants alternate render by render, so that a
    busy machine weighs on each the same."""
    variants = variants or {"": None}
    engine = make_engine(url, pool_size=1)
    timings: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    try:
        for name, page in PAGES.items():
            for i in range(repeat):
                last = end - timedelta(days=i)
                flt = QiFilter(last - timedelta(days=days - 1), last)
                for variant, schema in variants.items():
                    with engine.connect() as conn, conn.begin():
                        conn.execute(text("SET TRANSACTION READ ONLY"))
                        if schema is not None:
                            conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": f"{schema}, public"})
                        started = time.perf_counter()
                        page(conn, flt, zone)
                        timings[variant].setdefault(name, []).append(time.perf_counter() - started)
    finally:
        engine.dispose()
    return {variant: {name: {"p50": statistics.median(t), "p95": float(np.percentile(t, 95)), "max": max(t)}
                      for name, t in pages.items()} for variant, pages in timings.items()}


BEFORE_SCHEMA = "qi_before"


def install_before(url: str, directory: Path) -> None:
    """Create the schema qi_before holding the definitions in `directory` (*.sql, e.g. the
    files of db/sql a change replaced, from git), so that the pages can be timed with the
    old and the new definitions on the same data, in one run."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {BEFORE_SCHEMA} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {BEFORE_SCHEMA}"))
            conn.execute(text(f"SET LOCAL search_path = {BEFORE_SCHEMA}, public"))
            for path in sorted(directory.glob("*.sql")):
                conn.exec_driver_sql(path.read_text())
    finally:
        engine.dispose()


def drop_before(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {BEFORE_SCHEMA} CASCADE"))
    finally:
        engine.dispose()


# The core.qi calls of the pages, timed one by one with --calls (where a page's time goes).
CALLS = ("stage_stats", "stage_histogram", "sla_compliance", "delivery_times", "ai_outcomes", "ai_overdue_studies",
         "study_outcomes", "delivery_outcomes", "attempt_failures", "top_errors", "volume", "volume_heatmap",
         "filter_options")


def bench_calls(url: str, zone: ZoneInfo, end: date, days: int, repeat: int) -> dict[str, float]:
    """Median seconds of each core.qi call of each page (label: page, function, keyword arguments)."""
    timings: dict[str, list[float]] = {}
    originals = {name: getattr(qi, name) for name in CALLS}
    page_name = ""

    def timed(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def call(conn: Connection, f: QiFilter, z: ZoneInfo, **kw: object) -> object:
            started = time.perf_counter()
            try:
                return fn(conn, f, z, **kw)
            finally:
                args = ", ".join(f"{k}={v}" for k, v in kw.items())
                timings.setdefault(f"{page_name}: {name}({args})", []).append(time.perf_counter() - started)
        return call

    engine = make_engine(url, pool_size=1)
    try:
        for name, fn in originals.items():
            setattr(qi, name, timed(name, fn))
        for page_name, page in PAGES.items():  # noqa: B007 - read by timed()
            for i in range(repeat):
                last = end - timedelta(days=i)
                with engine.connect() as conn, conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    page(conn, QiFilter(last - timedelta(days=days - 1), last), zone)
    finally:
        for name, fn in originals.items():
            setattr(qi, name, fn)
        engine.dispose()
    return {label: statistics.median(t) for label, t in timings.items()}


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


def bench_refresh(url: str, studies: int = 1000) -> dict[str, float | None]:
    """Mark the newest `studies` studies dirty, time qi_refresh; then the triggers' write cost."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE studies SET updated_at = now() WHERE id IN "
                              "(SELECT id FROM studies ORDER BY id DESC LIMIT :n)"), {"n": studies})
        hist: dict[str, float] = {}
        with engine.connect() as conn:
            hist["present"] = conn.execute(text("SELECT to_regclass('qi_stage_hist') IS NOT NULL")).scalar_one()
        if hist["present"]:
            # the same refresh without the per-day tables' triggers (rolled back), then the
            # full recomputation of both tables that a change of TZ makes (rolled back)
            with engine.connect() as conn:
                trans = conn.begin()
                for trigger in ("ins", "upd", "del"):
                    conn.execute(text(f"ALTER TABLE qi_study_fact DISABLE TRIGGER qi_stage_hist_{trigger}"))
                started = time.perf_counter()
                qi.refresh(conn, limit=studies)
                hist["refresh_without_s"] = time.perf_counter() - started
                trans.rollback()
            with engine.connect() as conn:
                trans = conn.begin()
                started = time.perf_counter()
                conn.execute(text("SELECT qi_stage_hist_fill(NULL), qi_study_cube_fill(NULL)"))
                hist["fill_all_s"] = time.perf_counter() - started
                trans.rollback()
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
            "record_ms_per_study_without_triggers": writes[False] * 1000,
            "refresh_without_hist_s": hist.get("refresh_without_s"), "hist_fill_all_s": hist.get("fill_all_s")}


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
    parser.add_argument("--skip-export", action="store_true", help="do not time the per-study export")
    parser.add_argument("--calls", action="store_true", help="also time each core.qi call of each page")
    parser.add_argument("--before", type=Path, default=None,
                        help="directory of old db/sql definitions: time the pages with them too, interleaved")
    args = parser.parse_args(argv)
    url = args.url if "+psycopg" in args.url else args.url.replace("postgresql://", "postgresql+psycopg://", 1)
    zone = ZoneInfo(args.tz)
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608 - constant names
                  for t in ("studies", "series", "routing_jobs", "events", "qi_dirty")}
        newest = conn.execute(text("SELECT max(first_received_at) FROM qi_study_fact")).scalar_one()
        settings = dict(conn.execute(text("SHOW shared_buffers")).mappings().one())
        hist = conn.execute(text(
            "SELECT (SELECT count(*) FROM qi_stage_hist), pg_total_relation_size('qi_stage_hist'), "
            "pg_total_relation_size('qi_study_fact') WHERE to_regclass('qi_stage_hist') IS NOT NULL")).first()
    engine.dispose()
    end = date.fromisoformat(args.end) if args.end else newest.astimezone(zone).date()
    print(f"database: {', '.join(f'{k}={v:,}' for k, v in counts.items())}; shared_buffers={settings}")
    if hist is not None:
        print(f"per-day histograms (0012): qi_stage_hist {hist[0]:,} rows, {hist[1] / 1e6:.0f} MB "
              f"(qi_study_fact {hist[2] / 1e6:.0f} MB)")
    print(f"host: {os.cpu_count()} CPUs; windows ending {end} ({args.tz}); {args.repeat} renders each\n")
    variants: dict[str, str | None] = {"": None}
    if args.before:
        install_before(url, args.before)
        variants = {"before": BEFORE_SCHEMA, "after": None}
    try:
        for days in args.days:
            print(f"QI page queries, last {days} days (seconds per page render):")
            results = bench_pages(url, zone, end, days, args.repeat, variants)
            for name in PAGES:
                cells = [f"{v + ' ' if v else ''}p50 {results[v][name]['p50']:.3f}  p95 {results[v][name]['p95']:.3f}  "
                         f"max {results[v][name]['max']:.3f}" for v in variants]
                print(f"  {name:<26} " + "   |   ".join(cells))
            print()
    finally:
        if args.before:
            drop_before(url)
    for days in args.days if args.calls else []:
        print(f"core.qi calls, last {days} days (median seconds per call, {min(args.repeat, 5)} renders):")
        for label, seconds in bench_calls(url, zone, end, days, min(args.repeat, 5)).items():
            print(f"  {seconds:.3f}  {label}")
        print()
    if not args.skip_export:
        bench_exports(url, zone, end, args.export_rows)
    if not args.skip_writes:
        r = bench_refresh(url)
        print(f"\nqi_refresh of {r['refreshed']} dirty studies: {r['refresh_s']:.2f} s")
        if r["refresh_without_hist_s"] is not None:
            print(f"  the same without the per-day tables' triggers: {r['refresh_without_hist_s']:.2f} s; "
                  f"recomputing both tables whole (a TZ change): {r['hist_fill_all_s']:.1f} s")
        print(f"recorder, one delivered AI study (~20 statements): {r['record_ms_per_study_with_triggers']:.1f} ms "
              f"with the dirty-marking triggers, {r['record_ms_per_study_without_triggers']:.1f} ms without")


def bench_exports(url: str, zone: ZoneInfo, end: date, export_rows: int) -> None:
    """The per-study CSV export of about `export_rows` studies and of a tenth of them."""
    start, stop, rows = export_range(url, zone, end, export_rows)
    out = Path("/tmp") / f"qi-bench-export-{os.getpid()}.csv"
    small_start, small_stop, small_rows = export_range(url, zone, end, max(1, export_rows // 10))
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


if __name__ == "__main__":
    main()
