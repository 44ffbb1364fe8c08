"""Retention's delete throughput through Orthanc's REST API, beside a plain DELETE loop.

    .venv/bin/python -m bench.retention_bench [--studies 200] [--batches 10,50,200]

Each round uploads `--studies` small studies (1 series, 2 instances) to a fresh Orthanc
on a throwaway stack (bench/stack.py), records them as delivered ten days ago (the
recorder's functions, as testkit/app_flows.py does), then deletes them all:

- plain: `DELETE /studies/{id}` for each, nothing else (the floor); then the same with
  the `GET /studies/{id}` retention makes first (Orthanc's part of retention's cost);
- retention: core/retention.run at RETENTION_DAYS_AFTER_DELIVERY=1 with RETENTION_BATCH
  set to each of `--batches`: the plan (one read of every study), and per batch a
  transaction that locks the rows, checks each study again, asks Orthanc for its
  LastUpdate, deletes it and records it (purged_at, event, audit line).

It prints studies/s for each and the ratio retention/plain (1.0: retention costs
nothing over the deletes themselves).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from bench.stack import BenchStack, bench_stack, print_footer
from core import retention
from core.orthanc_client import OrthancClient
from core.settings import settings_from_values
from core.states import AuditSource
from testkit import app_flows
from testkit.synthetic import make_study


def load(stack: BenchStack, orthanc_rest: object, n: int, first: int, *, record: bool = True) -> list[str]:
    """Upload n studies and (`record`) record them delivered ten days ago; their Orthanc ids."""
    ids = []
    at = datetime.now(UTC) - timedelta(days=10)
    with stack.engine.begin() as conn:
        for i in range(first, first + n):
            study, series = app_flows.upload(orthanc_rest, make_study(1, 2, f"CR BENCH {i}"))
            ids.append(study)
            if not record:
                continue
            flow = app_flows.arrive(conn, i, at + timedelta(seconds=i), orthanc_id=study,
                                    series_orthanc_id=next(iter(series.values())))
            app_flows.send_ok(conn, app_flows.route(conn, flow, at + timedelta(seconds=i + 5), "PEER"),
                              at + timedelta(seconds=i + 6))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--batches", default="10,50,200")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with bench_stack("retention") as stack:
        server = stack.orthanc()
        rest = server.rest
        assert rest is not None
        first = 1
        with OrthancClient.from_settings(stack.settings) as orthanc:
            ids = load(stack, rest, args.studies, first, record=False)
            first += args.studies
            started = time.perf_counter()
            for orthanc_id in ids:
                assert orthanc.delete_study(orthanc_id)
            plain = args.studies / (time.perf_counter() - started)
            ids = load(stack, rest, args.studies, first, record=False)
            first += args.studies
            started = time.perf_counter()
            for orthanc_id in ids:  # what retention asks Orthanc: LastUpdate, then the delete
                orthanc.study(orthanc_id)
                assert orthanc.delete_study(orthanc_id)
            checked = args.studies / (time.perf_counter() - started)
            print(f"studies={args.studies} (1 series, 2 instances each)")
            print(f"plain DELETE loop        : {plain:7.1f} studies/s")
            print(f"GET + DELETE loop        : {checked:7.1f} studies/s")
            for batch in batches:
                load(stack, rest, args.studies, first)
                first += args.studies
                settings = settings_from_values({**stack.values, "RETENTION_DAYS_AFTER_DELIVERY": "1",
                                                 "RETENTION_BATCH": str(batch)})
                started = time.perf_counter()
                result = retention.run(stack.engine, orthanc, settings, actor="bench", source=AuditSource.CLI,
                                       now=datetime.now(UTC) + timedelta(hours=2))
                elapsed = time.perf_counter() - started
                assert len(result.purged) == args.studies and not rest.get("/studies"), result.summary()
                rate = args.studies / elapsed
                print(f"retention RETENTION_BATCH={batch:<4}: {rate:7.1f} studies/s  ratio retention/plain = "
                      f"{rate / plain:.2f}")
    print_footer("bench.retention_bench")


if __name__ == "__main__":
    main()
