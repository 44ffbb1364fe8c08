"""How fast a killed worker's jobs are taken up: SIGKILL -> first adopted job, over many kills.

Each round sends a few studies to a dcmtk `storescp` that sleeps during every
association (`--sleep-during`), so the sending worker holds jobs in `sending` with an
Orthanc job id. The bench SIGKILLs that worker and measures, by polling PostgreSQL
every 10 ms, how long until the first of its jobs is claimed by another worker:

* `restart`: the killed worker is started again at once (as supervisord does), so the
  figure includes the new process's start-up;
* `live`: a second worker is already running and adopts.

A worker is alive while it holds its advisory lock (worker/dispatcher.py), which
PostgreSQL frees when the killed process's connection drops; before, a dead worker's
jobs waited for its heartbeat to go stale (HEARTBEAT_STALE_S, 20 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sqlalchemy import text

from bench.stack import ALL_TO_PEER, BenchStack, bench_stack, print_footer
from testkit.dicom_peers import send_datasets
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess
from testkit.synthetic import make_study


def claimed_by(stack: BenchStack, pid: int) -> list[int]:
    with stack.engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT id FROM routing_jobs WHERE state = 'sending' AND orthanc_job_id IS NOT NULL "
            "AND split_part(claimed_by, ':', 2) = :pid"), {"pid": str(pid)}).scalars())


def taken_over(stack: BenchStack, jobs: list[int], pid: int) -> bool:
    with stack.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM routing_jobs WHERE id = ANY(:ids) AND claimed_by IS NOT NULL "
            "AND split_part(claimed_by, ':', 2) <> :pid"), {"ids": jobs, "pid": str(pid)}).scalar_one())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


WORKERS: dict[str, WorkerProcess] = {}


def start_worker(stack: BenchStack, name: str, wait: bool = True) -> WorkerProcess:
    """A worker on its own health port, stopped when the stack ends."""
    rules = stack.base / "rules" / "routing.yml"  # a folder of its own: the worker watches it
    if not rules.exists():
        rules.parent.mkdir()
        rules.write_text(ALL_TO_PEER)
    worker = WorkerProcess({**stack.values, "ROUTING_RULES": str(rules), "ROUTING_API_PORT": str(free_port())},
                           stack.base, name)
    stack._cleanup.callback(worker.stop)
    WORKERS[name] = worker
    return worker.start() if wait else worker.start_nowait()


def spare_of(stack: BenchStack, name: str) -> WorkerProcess:
    return WORKERS[name]


def run_mode(stack: BenchStack, mode: str, kills: int, studies_per_round: int) -> list[float]:
    """Kill the sending worker `kills` times; seconds from each kill to the first adoption."""
    sender = start_worker(stack, f"{mode}-0")
    figures = []
    for round_ in range(kills):
        for i in range(studies_per_round):
            send_datasets(make_study(1, 1, f"CR RECOVERY {mode} {round_} {i}"), "127.0.0.1",
                          stack.settings.dicom_port, "MOD1", stack.settings.orthanc_aet)
        assert sender.proc is not None
        pid = sender.proc.pid
        jobs = wait_until(lambda pid=pid: claimed_by(stack, pid), timeout=60, interval=0.01,
                          what="jobs in flight at the worker to kill")
        if mode == "live":  # started now, so that it is idle, alive and took none of the jobs
            start_worker(stack, f"{mode}-spare-{round_}")
        sender.kill()
        killed = time.monotonic()
        if mode == "restart":
            sender = start_worker(stack, f"{mode}-{round_ + 1}", wait=False)
        wait_until(lambda jobs=jobs, pid=pid: taken_over(stack, jobs, pid), timeout=60, interval=0.01,
                   what="a killed worker's job adopted")
        figures.append(time.monotonic() - killed)
        print(f"{mode} kill {round_ + 1}: {figures[-1]:.2f} s", flush=True)
        wait_until(lambda: stack.count_jobs() == stack.count_jobs("succeeded"), timeout=120, interval=0.1,
                   what="every job final before the next kill")
        if mode == "live":  # the spare took over: it sends the next round
            sender = spare_of(stack, f"{mode}-spare-{round_}")
        else:
            wait_until(sender.healthy, timeout=30, what="the restarted worker healthy")
    sender.stop()  # the next mode starts with a worker of its own
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--studies", type=int, default=3, help="studies in flight at each kill")
    parser.add_argument("--sleep-during", type=int, default=3, help="seconds the peer sleeps in each association")
    args = parser.parse_args()
    with bench_stack("recovery") as stack:
        rest = stack.orthanc().rest
        port = free_port()
        peer_dir = stack.base / "peer"
        peer_dir.mkdir()
        stack.storescp(port, "--sleep-during", str(args.sleep_during), "-od", str(peer_dir))
        rest.put_modality("PEER", "PEER", port)
        results = {mode: run_mode(stack, mode, args.kills, args.studies) for mode in ("restart", "live")}
    print(f"kills={args.kills} per mode, {args.studies} studies in flight at each kill, peer sleeps "
          f"{args.sleep_during} s per association")
    for mode, figures in results.items():
        print(f"{mode:8s}: kill -> first adopted job p50 {statistics.median(figures):.2f} s, "
              f"p95 {percentile(figures, 0.95):.2f} s, max {max(figures):.2f} s")
    print_footer("bench.recovery_bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
