"""Worker forwarding throughput against Orthanc's own direct store, side by side.

    .venv/bin/python -m bench.worker_bench [--studies 200] [--instances 10] [--send-batch N]

One real PostgreSQL, one real Orthanc (TCP_NODELAY=1) and one dcmtk `storescp` peer.
The same stored studies are forwarded twice to the same peer:
  1. direct: one asynchronous Orthanc store job per study, all submitted at once;
  2. worker: `python -m worker` with a rule sending every study to the peer. The peer
     is held while the worker reads /changes from 0 and queues a job per study (that
     cold-start routing time is reported on its own), then released: the delivery
     clock runs from the release to the last success, like the direct store's.
Then a live phase sends more studies while the worker runs and measures the latency
from the StableStudy change (seen by this script polling /changes every 20 ms) to the
worker's send start (delivery_started), which includes the worker's POLL_INTERVAL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import text

from bench.stack import bench_stack
from core.operations import hold_destination, release_destination, resend_study
from testkit.dicom_peers import send_datasets
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_all(studies, settings, senders: int = 4) -> None:
    chunks = [studies[i::senders] for i in range(senders)]

    def run(chunk) -> None:
        for study in chunk:
            statuses = send_datasets(study, "127.0.0.1", settings.dicom_port, "BENCHMOD", settings.orthanc_aet)
            assert all(s == 0 for s in statuses), f"C-STORE statuses {sorted(set(statuses))}"

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def count_stable(rest, n: int) -> None:
    def done() -> bool:
        seen, since = 0, 0
        while True:
            page = rest.get("/changes", since=since, limit=1000)
            seen += sum(1 for c in page["Changes"] if c["ChangeType"] == "StableStudy")
            since = page["Last"]
            if page["Done"]:
                return seen >= n
    wait_until(done, timeout=600, interval=0.5, what=f"{n} stable studies")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--live", type=int, default=40, help="studies in the live latency phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/worker rounds (median)")
    parser.add_argument("--send-batch", default=None, help="override SEND_BATCH (jobs per Orthanc store job)")
    args = parser.parse_args()

    overrides = {"SEND_BATCH": args.send_batch} if args.send_batch else {}
    with bench_stack("bench", **overrides) as stack:
        settings, engine = stack.settings, stack.engine
        rest = stack.orthanc().rest
        peer_dir = stack.base / "peer"
        peer_dir.mkdir()
        peer_port = free_port()
        stack.storescp(peer_port, "-od", str(peer_dir))
        rest.put_modality("PEER", "PEER", peer_port)

        studies = [make_study(1, args.instances, f"CR BENCH {i}") for i in range(args.studies)]
        total = args.studies * args.instances
        t = time.perf_counter()
        send_all(studies, settings)
        ingest_s = time.perf_counter() - t
        count_stable(rest, args.studies)
        study_ids = [rest.lookup(s[0].StudyInstanceUID) for s in studies]

        # 1. Orthanc's own store, every study as its own job, all at once.
        def direct_round() -> float:
            t = time.perf_counter()
            jobs = [rest.store_async("PEER", [sid]) for sid in study_ids]
            for job in jobs:
                assert rest.wait_job(job, timeout=900)["State"] == "Success"
            return time.perf_counter() - t

        direct_times = [direct_round()]

        # 2. The worker forwarding the same studies to the same peer. The peer is held
        #    while the worker reads /changes from 0 and routes every study, then released:
        #    the clock measures delivery alone, like the direct store above.
        with engine.begin() as conn:
            hold_destination(conn, "PEER", actor="bench", source="cli")
        t = time.perf_counter()
        worker = stack.worker()
        count = stack.count_jobs

        wait_until(lambda: count("queued") >= args.studies, timeout=900, interval=0.1, what="jobs queued")
        routing_s = time.perf_counter() - t
        cpu_before = cpu_seconds(worker.proc.pid)

        def worker_round(expected: int) -> float:
            t = time.perf_counter()
            with engine.begin() as conn:
                release_destination(conn, "PEER", actor="bench", source="cli")
            wait_until(lambda: count("succeeded") >= expected, timeout=1800, interval=0.02, what="worker deliveries")
            return time.perf_counter() - t

        worker_times = [worker_round(args.studies)]
        worker_cpu_s = cpu_seconds(worker.proc.pid) - cpu_before
        # More rounds, alternating with the direct store so both see the same machine:
        # the worker's rounds resend every study (operator resends, same dispatcher path).
        for round_no in range(2, args.rounds + 1):
            direct_times.append(direct_round())
            with engine.begin() as conn:
                hold_destination(conn, "PEER", actor="bench", source="cli")
                for study_id in conn.execute(text("SELECT id FROM studies ORDER BY id")).scalars():
                    resend_study(conn, study_id, "PEER", actor="bench", source="cli")
            worker_times.append(worker_round(args.studies * round_no))
        direct_s = statistics.median(direct_times)
        worker_s = statistics.median(worker_times)

        # 3. Live latency: StableStudy seen by this script -> delivery_started by the worker.
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            since = rest.get("/changes", last="")["Last"]
            while not stop.is_set():
                page = rest.get("/changes", since=since, limit=1000)
                now = time.time()
                for change in page["Changes"]:
                    if change["ChangeType"] == "StableStudy":
                        seen.setdefault(change["ID"], now)
                since = page["Last"]
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        live = [make_study(1, args.instances, f"CR LIVE {i}") for i in range(args.live)]
        for study in live:
            send_all([study], settings, senders=1)
            time.sleep(0.3)
        wait_until(lambda: count("succeeded") >= args.studies * args.rounds + args.live, timeout=600, what="live deliveries")
        stop.set()
        with engine.connect() as conn:
            started = dict(conn.execute(text(
                "SELECT s.orthanc_id, min(e.at) FROM events e JOIN studies s ON s.id = e.study_id "
                "WHERE e.type = 'delivery_started' GROUP BY s.orthanc_id")).all())
        latencies = [started[oid].timestamp() - t_seen for oid, t_seen in seen.items() if oid in started]

    direct_rate = total / direct_s
    worker_rate = total / worker_s
    print(f"studies={args.studies} instances/study={args.instances} total={total} "
          f"(ingest {total / ingest_s:.0f} inst/s; SEND_BATCH={settings.send_batch}, "
          f"ORTHANC_CONCURRENT_JOBS={settings.orthanc_concurrent_jobs})")
    print(f"rounds={args.rounds} (medians; direct {', '.join(f'{x:.2f}' for x in direct_times)} s, "
          f"worker {', '.join(f'{x:.2f}' for x in worker_times)} s)")
    print(f"direct Orthanc store : {direct_s:7.2f} s  {direct_rate:7.1f} inst/s")
    print(f"worker delivery      : {worker_s:7.2f} s  {worker_rate:7.1f} inst/s "
          f"(worker CPU {1000 * worker_cpu_s / args.studies:.1f} ms per study, first round)")
    print(f"throughput ratio worker/direct = {worker_rate / direct_rate:.2f}")
    print(f"worker routing from a cold start: {routing_s:.2f} s for {args.studies} studies "
          f"({args.studies / routing_s:.0f} studies/s, {total / routing_s:.0f} inst/s; /changes read from 0)")
    print(f"StableStudy -> send start over {len(latencies)} live studies (POLL_INTERVAL 0.5 s): "
          f"p50 {statistics.median(latencies):.3f} s, p95 {float(np.percentile(latencies, 95)):.3f} s, "
          f"max {max(latencies):.3f} s")
    print(f"measured {datetime.now(UTC).isoformat(timespec='seconds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
