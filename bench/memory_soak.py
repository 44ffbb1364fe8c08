"""The worker's memory over a long steady run: does its resident set stay flat?

    .venv/bin/python -m bench.memory_soak [--minutes 30] [--rate 1.0] [--instances 3]

One real PostgreSQL, one real Orthanc (TCP_NODELAY=1), a dcmtk `storescp` peer that
receives and discards (`--ignore`), and `python -m worker` routing every study to the
peer. A sender thread sends `--rate` studies per second for `--minutes`; every 10 s the
script samples the worker's VmRSS (/proc), its deliveries and its cursor lag.

The first `--warmup` minutes are excluded (imports, caches and connection pools fill
up there). Over the rest it reports RSS per `--bucket` minutes, the least-squares slope in
MB per hour and the growth from the first to the last bucket. A leak of one small
object per study (say 1 KB) at 1 study/s would show as ~3.5 MB/hour.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.stack import bench_stack
from testkit.dicom_peers import send_datasets
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study

SAMPLE_EVERY_S = 10.0


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sender(settings, rate: float, instances: int, stop_at: float, sent: list[int]) -> None:
    """Send one small study every 1/rate seconds until `stop_at` (monotonic)."""
    period, n = 1.0 / rate, 0
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        study = make_study(1, instances, f"CR SOAK {n}")
        statuses = send_datasets(study, "127.0.0.1", settings.dicom_port, "SOAKMOD", settings.orthanc_aet)
        if any(s != 0 for s in statuses):
            raise RuntimeError(f"C-STORE statuses {sorted(set(statuses))}")
        n += 1
        sent[0] = n
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=3, help="minutes excluded from the trend")
    parser.add_argument("--bucket", type=float, default=5, help="minutes per row of the table")
    parser.add_argument("--rate", type=float, default=1.0, help="studies sent per second")
    parser.add_argument("--instances", type=int, default=3, help="instances per study")
    args = parser.parse_args()

    with bench_stack("soak") as stack:
        settings = stack.settings
        orthanc = stack.orthanc()
        peer_port = free_port()
        stack.storescp(peer_port, "--ignore")
        orthanc.rest.put_modality("PEER", "PEER", peer_port)
        worker = stack.worker()
        pid = worker.proc.pid

        def delivered() -> int:
            return stack.count_jobs("succeeded")

        start = time.monotonic()
        stop_at = start + args.minutes * 60
        sent = [0]
        thread = threading.Thread(target=sender, args=(settings, args.rate, args.instances, stop_at, sent),
                                  daemon=True)
        thread.start()
        samples: list[tuple[float, float, int, int, int]] = []  # (s, rss MB, sent, delivered, lag)
        while thread.is_alive():
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {worker.log}")
            samples.append((time.monotonic() - start, rss_mb(pid), sent[0], delivered(),
                            stack.cursor_lag(orthanc.rest)))
            time.sleep(SAMPLE_EVERY_S)
        wait_until(lambda: delivered() >= sent[0], timeout=300, what="the last deliveries")
        samples.append((time.monotonic() - start, rss_mb(pid), sent[0], delivered(), stack.cursor_lag(orthanc.rest)))

    report(samples, args)
    return 0


def report(samples: list[tuple[float, float, int, int, int]], args: argparse.Namespace) -> None:
    """Print the RSS trend after the warm-up as a markdown table plus a summary line."""
    steady = [s for s in samples if s[0] >= args.warmup * 60]
    t = np.array([s[0] for s in steady]) / 3600
    rss = np.array([s[1] for s in steady])
    slope = float(np.polyfit(t, rss, 1)[0]) if len(steady) >= 2 else float("nan")
    print(f"worker memory soak: {args.minutes:g} min, {args.rate:g} studies/s x {args.instances} instances, "
          f"{samples[-1][2]} studies sent, {samples[-1][3]} delivered; samples every {SAMPLE_EVERY_S:g} s, "
          f"first {args.warmup:g} min excluded")
    print()
    print("| minutes | RSS median (MB) | RSS max (MB) | studies delivered | cursor lag max (changes) |")
    print("|---|---:|---:|---:|---:|")
    warmup_s, bucket_s = args.warmup * 60, args.bucket * 60
    rows_by_bucket: dict[int, list[tuple[float, float, int, int, int]]] = {}
    for s in samples:
        rows_by_bucket.setdefault(-1 if s[0] < warmup_s else int((s[0] - warmup_s) // bucket_s), []).append(s)
    medians = []
    for b, rows in sorted(rows_by_bucket.items()):
        med = statistics.median(r[1] for r in rows)
        if b < 0:
            label = f"0-{args.warmup:g} (warm-up)"
        else:
            medians.append(med)
            label = f"{args.warmup + b * args.bucket:g}-{args.warmup + (b + 1) * args.bucket:g}"
        print(f"| {label} | {med:.1f} | {max(r[1] for r in rows):.1f} | {rows[-1][3]} | {max(r[4] for r in rows)} |")
    print()
    print(f"RSS after warm-up: first bucket {medians[0]:.1f} MB, last {medians[-1]:.1f} MB "
          f"(growth {medians[-1] - medians[0]:+.1f} MB); least-squares slope {slope:+.2f} MB/hour; "
          f"peak {max(s[1] for s in samples):.1f} MB")
    print(f"measured {datetime.now(UTC).isoformat(timespec='seconds')}")


if __name__ == "__main__":
    sys.exit(main())
