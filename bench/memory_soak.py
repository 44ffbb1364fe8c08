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
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from hub import pgcluster
from hub.db import migrate
from hub.dicom_peers import send_datasets
from hub.envfile import generate_secret
from hub.settings import PROJECT_ROOT, settings_from_values
from hub.synthetic import make_study
from tests.harness.ports import free_port
from tests.harness.stack import OrthancServer, PostgresServer, make_values, remove_tree, write_env
from tests.harness.waiting import wait_until

RULES = """
version: 1
rules:
  - name: all-to-peer
    when: {kind: original}
    then: {deliver_to: [PEER], payload: study}
"""
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

    base = Path(tempfile.mkdtemp(prefix="hub-soak-"))
    os.chmod(base, 0o755)
    values = make_values(base, base / "pgdata", STABLE_AGE="2", POLL_INTERVAL="0.5")
    settings = settings_from_values(values)
    pg = PostgresServer(datadir=settings.postgres_storage, host="127.0.0.1", port=settings.postgres_port,
                        superuser_password=generate_secret(), logfile=base / "pg.log")
    orthanc = OrthancServer(settings, base / "orthanc")
    peer_port = free_port()
    peer = subprocess.Popen(["storescp", "--ignore", "-aet", "PEER", str(peer_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TCP_NODELAY": "1"})
    worker = None
    try:
        pg.start()
        pgcluster.ensure_roles_and_databases(settings, superuser_password=pg.superuser_password)
        migrate(settings.pg_url())
        orthanc.start()
        orthanc.rest.put_modality("PEER", "PEER", peer_port)
        rules = base / "routing.yml"
        rules.write_text(RULES)
        values["ROUTING_RULES"] = str(rules)
        env_file = write_env(values, base / ".env")
        with open(base / "worker.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "worker"], cwd=PROJECT_ROOT,
                                      env={**os.environ, "HUB_ENV_FILE": str(env_file)},
                                      stdout=log, stderr=subprocess.STDOUT)
        engine = create_engine(settings.pg_url())

        def delivered() -> int:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM routing_jobs WHERE state = 'succeeded'")).scalar_one()

        def cursor_lag() -> int:
            last = orthanc.rest.get("/changes", last="")["Last"]
            with engine.connect() as conn:
                cursor = conn.execute(text("SELECT max(value) FROM worker_state")).scalar_one() or 0
            return max(0, last - cursor)

        start = time.monotonic()
        stop_at = start + args.minutes * 60
        sent = [0]
        thread = threading.Thread(target=sender, args=(settings, args.rate, args.instances, stop_at, sent),
                                  daemon=True)
        thread.start()
        samples: list[tuple[float, float, int, int, int]] = []  # (s, rss MB, sent, delivered, lag)
        while thread.is_alive():
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {base / 'worker.log'}")
            samples.append((time.monotonic() - start, rss_mb(worker.pid), sent[0], delivered(), cursor_lag()))
            time.sleep(SAMPLE_EVERY_S)
        wait_until(lambda: delivered() >= sent[0], timeout=300, what="the last deliveries")
        samples.append((time.monotonic() - start, rss_mb(worker.pid), sent[0], delivered(), cursor_lag()))

        report(samples, args)
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        peer.terminate()
        orthanc.stop()
        pg.stop()
        remove_tree(base)


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
