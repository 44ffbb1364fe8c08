"""Ingest headroom: Orthanc's C-STORE intake with and without the worker running.

    .venv/bin/python -m bench.ingest_bench [--studies 200] [--instances 10] [--senders 4] [--rounds 3]

One real PostgreSQL, one real Orthanc (TCP_NODELAY=1) and a dcmtk `storescp --ignore`
peer. The study set is written to files once and pushed by `--senders` parallel dcmtk
`storescu` processes, as fast as Orthanc accepts. Rounds alternate: A without the
worker, B with `python -m worker` running and forwarding every study to the peer (the
realistic case: ingest and forwarding share the machine), C with the worker running
and the peer held, so it records and routes but sends nothing: B/A is the headroom,
C/A the share of it that is the worker's own bookkeeping rather than Orthanc's sending.
Before every round all
studies are deleted from Orthanc, and every round sends its own fresh studies of the
same size (new UIDs, so the worker records and forwards each of them).

During B rounds the worker's cursor lag (Orthanc's last change minus the worker's
cursor) is sampled every 0.2 s; the report gives its maximum and 95th percentile above
the settled lag before the round, and the time from the last instance until the lag is
back to that level with every study of the round routed (this includes Orthanc's
STABLE_AGE of 2 s before the last StableStudy change).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text

from bench.worker_bench import RULES, cpu_seconds
from hub import pgcluster
from hub.db import migrate
from hub.envfile import generate_secret
from hub.operations import hold_destination, release_destination
from hub.settings import PROJECT_ROOT, settings_from_values
from hub.synthetic import make_study, write_datasets
from tests.harness.ports import free_port
from tests.harness.stack import OrthancServer, PostgresServer, make_values, remove_tree, write_env
from tests.harness.waiting import wait_until

LAG_SAMPLE_S = 0.2


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (PostgreSQL's backends)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # a backend that just exited
                total += tree_cpu(int(child))
    return total


def push(files: list[list[Path]], settings) -> float:
    """Run one storescu per file list at once; seconds until the last one exits."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "INGEST", "-aec", settings.orthanc_aet, "127.0.0.1",
                               str(settings.dicom_port), *map(str, chunk)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for chunk in files]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu exited with {proc.returncode}: {err.decode()[-500:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hub-ingest-"))
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
    try:
        pg.start()
        pgcluster.ensure_roles_and_databases(settings, superuser_password=pg.superuser_password)
        migrate(settings.pg_url())
        orthanc.start()
        rest = orthanc.rest
        rest.put_modality("PEER", "PEER", peer_port)
        rules = base / "routing.yml"
        rules.write_text(RULES)
        values["ROUTING_RULES"] = str(rules)
        env_file = write_env(values, base / ".env")
        engine = create_engine(settings.pg_url())

        def study_set(name: str) -> list[list[Path]]:
            """Fresh studies (new UIDs) as files, split across the senders."""
            paths: list[Path] = []
            for i in range(args.studies):
                study_dir = base / "files" / name / f"{i:05d}"
                study_dir.mkdir(parents=True)
                paths.extend(write_datasets(make_study(1, args.instances, f"CR INGEST {name} {i}"), study_dir))
            return [paths[i::args.senders] for i in range(args.senders)]

        sets = {f"{r}{side}": study_set(f"{r}{side}") for r in range(args.rounds) for side in "ABC"}
        total = args.studies * args.instances

        def clear_orthanc() -> None:
            for study_id in rest.get("/studies"):
                rest.delete(f"/studies/{study_id}")

        def lag() -> int:
            last = rest.get("/changes", last="")["Last"]
            with engine.connect() as conn:
                cursor = conn.execute(text("SELECT max(value) FROM worker_state")).scalar_one() or 0
            return max(0, last - cursor)

        def start_worker() -> subprocess.Popen:
            with open(base / "worker.log", "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=PROJECT_ROOT,
                                        env={**os.environ, "HUB_ENV_FILE": str(env_file)},
                                        stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{settings.routing_api_port}/health"

            def healthy() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; see {base / 'worker.log'}")
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=60, what="worker health")
            seen: list[int] = []
            wait_until(lambda: seen.append(lag()) or seen[-3:] == [seen[-1]] * 3, timeout=120, interval=1,
                       what="worker settled before the round")
            baseline[0] = seen[-1]
            return proc

        baseline = [0]  # lag when settled: changes past the worker's last commit that it has no use for

        def jobs_queued() -> int:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM routing_jobs")).scalar_one()

        def cpu() -> tuple[float, float]:
            return cpu_seconds(orthanc.proc.pid), tree_cpu(pg.proc.pid)

        def with_worker(name: str, held: bool) -> tuple[float, int, float, float, tuple[float, ...]]:
            """One round with the worker running: intake rate, lag max and p95, seconds to lag 0,
            and the CPU seconds Orthanc, PostgreSQL and the worker spent until then."""
            clear_orthanc()
            if held:
                with engine.begin() as conn:
                    hold_destination(conn, "PEER", actor="bench", source="cli")
            proc = start_worker()
            jobs_before = jobs_queued()
            samples: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(LAG_SAMPLE_S):
                    samples.append(lag())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                before = (*cpu(), cpu_seconds(proc.pid))
                rate = total / push(sets[name], settings)
                ended = time.perf_counter()
                wait_until(lambda: jobs_queued() - jobs_before >= args.studies and lag() <= baseline[0],
                           timeout=300, interval=0.05, what="every study of the round routed, lag back to settled")
                settled = time.perf_counter() - ended
                used = tuple(b - a for a, b in zip(before, (*cpu(), cpu_seconds(proc.pid)), strict=True))
            finally:
                stop.set()
                sampler.join()
                proc.terminate()
                proc.wait(60)
            if held:  # the held round's jobs are never sent: they must not load the next round
                with engine.begin() as conn:
                    conn.execute(text("UPDATE routing_jobs SET state = 'cancelled' WHERE state = 'queued'"))
                    release_destination(conn, "PEER", actor="bench", source="cli")
            excess = [max(0, x - baseline[0]) for x in samples] or [0]
            return rate, max(excess), float(np.percentile(excess, 95)), settled, used

        a_rates, b_rates, c_rates, b_lags = [], [], [], []
        cpu_use: dict[str, list[tuple[float, ...]]] = {"A": [], "B": [], "C": []}
        for r in range(args.rounds):
            clear_orthanc()
            before = cpu()
            a_rates.append(total / push(sets[f"{r}A"], settings))
            cpu_use["A"].append((*(b - a for a, b in zip(before, cpu(), strict=True)), 0.0))
            b_lags.append(with_worker(f"{r}B", held=False))
            b_rates.append(b_lags[-1][0])
            cpu_use["B"].append(b_lags[-1][4])
            c_round = with_worker(f"{r}C", held=True)
            c_rates.append(c_round[0])
            cpu_use["C"].append(c_round[4])

        def ratios(rates: list[float]) -> str:
            of_medians = statistics.median(rates) / statistics.median(a_rates)
            of_pairs = statistics.median(x / a for a, x in zip(a_rates, rates, strict=True))
            return f"median {statistics.median(rates):.0f} inst/s, ratio to A {of_medians:.2f} (median of rounds {of_pairs:.2f})"

        print(f"{args.studies} studies x {args.instances} instances = {total} per round, {args.senders} storescu "
              f"senders, {args.rounds} rounds of A (Orthanc alone), B (the worker running, forwarding every study "
              f"to a peer) and C (the worker running, peer held: it records and routes, nothing is sent)")
        print()
        print("| round | A (inst/s) | B (inst/s) | B/A | C (inst/s) | C/A | B: cursor lag max (changes) | p95 | "
              "B: lag back to 0, s after the last instance |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, (a, (b, m, p, d, _), c) in enumerate(zip(a_rates, b_lags, c_rates, strict=True), 1):
            print(f"| {i} | {a:.0f} | {b:.0f} | {b / a:.2f} | {c:.0f} | {c / a:.2f} | {m} | {p:.0f} | {d:.2f} |")
        print()
        print(f"A: median {statistics.median(a_rates):.0f} inst/s")
        print(f"B: {ratios(b_rates)}")
        print(f"C: {ratios(c_rates)}")
        print()
        print("CPU per instance received, median of rounds (A: during the push; B, C: until the lag is back to 0):")
        print()
        print("| round kind | Orthanc (ms) | PostgreSQL (ms) | worker (ms) | total (ms) |")
        print("|---|---:|---:|---:|---:|")
        for kind, used in cpu_use.items():
            per = [statistics.median(u[k] for u in used) * 1000 / total for k in range(3)]
            print(f"| {kind} | {per[0]:.2f} | {per[1]:.2f} | {per[2]:.2f} | {sum(per):.2f} |")
        print(f"command: .venv/bin/python -m bench.ingest_bench {' '.join(sys.argv[1:])}".rstrip())
        print(f"measured {datetime.now(UTC).isoformat(timespec='seconds')}")
        return 0
    finally:
        peer.terminate()
        orthanc.stop()
        pg.stop()
        remove_tree(base)


if __name__ == "__main__":
    sys.exit(main())
