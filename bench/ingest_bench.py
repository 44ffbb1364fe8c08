"""Ingest headroom: Orthanc's C-STORE intake with and without the worker running.

    .venv/bin/python -m bench.ingest_bench [--studies 60] [--instances 10] [--senders 4] [--rounds 3]
                                           [--baseline DIR [DIR ...]] [--record-only]

One real PostgreSQL, one real Orthanc (TCP_NODELAY=1) and a dcmtk `storescp --ignore`
peer. The study set is written to files once and pushed by `--senders` parallel dcmtk
`storescu` processes, as fast as Orthanc accepts. Rounds alternate: A without the
worker, B with `python -m worker` running and forwarding every study to the peer (the
realistic case: ingest and forwarding share the machine). Before every round all
studies are deleted from Orthanc, and every round sends its own fresh studies of the
same size (new UIDs, so the worker records and forwards each of them).

With `--baseline DIR [DIR ...]` (checkouts of other revisions, e.g. `git worktree add DIR
REV`, migrated by this tree's schema) each round adds a side C (D, ...): the same with that
DIR's worker, so a change to the worker is measured before and after in one run, under the
same load (the worker sides take turns going first). `--record-only` adds a side R: this
tree's worker with rules that route nothing, so it records every study and sends none,
which separates what recording costs Orthanc's intake from what forwarding does.

During B (and C) rounds the worker's cursor lag (Orthanc's last change minus the worker's
cursor) is sampled every 0.2 s; the report gives its maximum above the settled lag
before the round, and the time from the end
of ingest until the worker has routed every study of the round (this includes Orthanc's
STABLE_AGE of 2 s before the last StableStudy change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.stack import ALL_TO_PEER, BenchStack, bench_stack, print_footer
from bench.worker_bench import cpu_seconds
from core.settings import PROJECT_ROOT
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancRest
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study, write_datasets

LAG_SAMPLE_S = 0.2
ROUTE_NOTHING = "rules: []\n"


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


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU seconds each part of the stack spends while a round's senders run.

    Orthanc, the worker and the peer are read from /proc/PID/stat; the senders are this
    script's children; "PostgreSQL and rest" is the machine's busy time minus those
    (mostly PostgreSQL, which is both Orthanc's index and the worker's database)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        children = os.times()
        return {"machine": machine_busy_s(), "senders": children.children_user + children.children_system,
                **{name: cpu_seconds(pid) for name, pid in self.pids.items()}}

    def spent(self) -> dict[str, float]:
        end = self._read()
        used = {name: end[name] - self.start[name] for name in end}
        used["PostgreSQL and rest"] = used.pop("machine") - sum(used.values())
        return used


def settled_lag(stack: BenchStack, rest: OrthancRest) -> int:
    """The cursor lag once the same three times in a row: changes past the worker's last
    commit that it has no use for, the baseline for the round's lag."""
    seen: list[int] = []
    wait_until(lambda: seen.append(stack.cursor_lag(rest)) or seen[-3:] == [seen[-1]] * 3,
               timeout=120, interval=1, what="worker settled before the round")
    return seen[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    parser.add_argument("--baseline", type=Path, nargs="+", default=[],
                        help="checkouts whose workers run as sides C, D, ..., for a before/after")
    parser.add_argument("--record-only", action="store_true",
                        help="add a side R: this tree's worker recording every study and forwarding none")
    args = parser.parse_args()
    workers = {"B": (PROJECT_ROOT, ALL_TO_PEER),
               **{chr(ord("C") + i): (d.resolve(), ALL_TO_PEER) for i, d in enumerate(args.baseline)},
               **({"R": (PROJECT_ROOT, ROUTE_NOTHING)} if args.record_only else {})}

    with bench_stack("ingest") as stack:
        settings, base = stack.settings, stack.base
        orthanc = stack.orthanc()
        rest = orthanc.rest
        peer_port = free_port()
        peer = stack.storescp(peer_port, "--ignore")
        pids = {"Orthanc": orthanc.proc.pid, "peer": peer.pid}
        rest.put_modality("PEER", "PEER", peer_port)

        def study_set(name: str) -> list[list[Path]]:
            """Fresh studies (new UIDs) as files, split across the senders."""
            paths: list[Path] = []
            for i in range(args.studies):
                study_dir = base / "files" / name / f"{i:05d}"
                study_dir.mkdir(parents=True)
                paths.extend(write_datasets(make_study(1, args.instances, f"CR INGEST {name} {i}"), study_dir))
            return [paths[i::args.senders] for i in range(args.senders)]

        sets = {(r, side): study_set(f"{r}{side}") for r in range(args.rounds) for side in ["A", *workers]}
        total = args.studies * args.instances

        def clear_orthanc() -> None:
            for study_id in rest.get("/studies"):
                rest.delete(f"/studies/{study_id}")

        rates: dict[str, list[float]] = {side: [] for side in ["A", *workers]}
        lags_max: dict[str, list[int]] = {side: [] for side in workers}
        drain: dict[str, list[float]] = {side: [] for side in workers}
        whole: dict[str, list[float]] = {side: [] for side in workers}  # worker CPU until all is delivered
        cpu: dict[str, list[dict[str, float]]] = {side: [] for side in rates}
        for r in range(args.rounds):
            clear_orthanc()
            window = CpuWindow(pids)
            rates["A"].append(total / push(sets[r, "A"], settings))
            cpu["A"].append(window.spent())
            # The worker sides take turns going first, so none gains from the machine's drift within a round.
            order = list(workers.items())
            for side, (code, rules) in order[r % len(order):] + order[:r % len(order)]:
                clear_orthanc()
                worker = stack.worker(rules, name=f"worker-{r}{side}", code=code)
                baseline = settled_lag(stack, rest)
                jobs_before = stack.count_jobs()
                delivered_before = stack.count_jobs("succeeded")
                stable_before = stack.count_stable_studies()
                samples: list[int] = []
                stop = threading.Event()

                def sample(out: list[int] = samples, done: threading.Event = stop) -> None:
                    while not done.wait(LAG_SAMPLE_S):
                        out.append(stack.cursor_lag(rest))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                window = CpuWindow({**pids, "worker": worker.proc.pid})
                worker_cpu = cpu_seconds(worker.proc.pid)
                rates[side].append(total / push(sets[r, side], settings))
                cpu[side].append(window.spent())
                ended = time.perf_counter()
                if rules == ROUTE_NOTHING:
                    wait_until(lambda before=stable_before: stack.count_stable_studies() - before >= args.studies,
                               timeout=300, interval=0.05, what="every study of the round seen stable")
                    drain[side].append(time.perf_counter() - ended)
                else:
                    wait_until(lambda before=jobs_before: stack.count_jobs() - before >= args.studies, timeout=300,
                               interval=0.05, what="every study of the round routed")
                    drain[side].append(time.perf_counter() - ended)
                    wait_until(lambda before=delivered_before: stack.count_jobs("succeeded") - before >= args.studies,
                               timeout=300, interval=0.1, what="every study of the round delivered")
                whole[side].append(cpu_seconds(worker.proc.pid) - worker_cpu)
                stop.set()
                sampler.join()
                lags_max[side].append(max(samples, default=0) - baseline)
                worker.stop(60)

    a_rates = rates["A"]
    print(f"{args.studies} studies x {args.instances} instances = {total} per round, {args.senders} "
          f"storescu senders, {args.rounds} rounds (A without the worker, B with this tree's worker forwarding "
          "to a peer" + "".join(f", {side} the same with the worker of {code}"
                                for side, (code, rules) in workers.items() if side != "B" and rules == ALL_TO_PEER)
          + (", R this tree's worker routing nothing" if args.record_only else "") + ")")
    for side in workers:
        side_rates = rates[side]
        ratio = statistics.median(side_rates) / statistics.median(a_rates)
        pair_ratio = statistics.median(b / a for a, b in zip(a_rates, side_rates, strict=True))
        print()
        print(f"| round | A: Orthanc alone (inst/s) | {side}: with the worker (inst/s) | {side}/A "
              "| max cursor lag (changes) | last study routed (R: seen stable), s after ingest |")
        print("|---|---:|---:|---:|---:|---:|")
        for i, (a, b, m, d) in enumerate(zip(a_rates, side_rates, lags_max[side], drain[side], strict=True), 1):
            print(f"| {i} | {a:.0f} | {b:.0f} | {b / a:.2f} | {m} | {d:.2f} |")
        print()
        print(f"median A {statistics.median(a_rates):.0f} inst/s, median {side} {statistics.median(side_rates):.0f} "
              f"inst/s; ratio of medians {ratio:.2f}, median of pair ratios {pair_ratio:.2f}")
    print()
    print("CPU seconds per 1,000 instances while the senders run (median over rounds; 2 cores):")
    print()
    parts = ["Orthanc", "PostgreSQL and rest", "senders", "peer", "worker"]
    print("| side | " + " | ".join(parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for side in rates:
        medians = [statistics.median(w.get(part, 0.0) for w in cpu[side]) * 1000 / total for part in parts]
        print(f"| {side} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    print()
    print("The worker's CPU seconds per 1,000 instances for the whole round, from its first instance until "
          "every study is delivered (R: seen stable; per round; the work after ingest included):")
    print()
    for side in workers:
        print(f"- {side}: " + ", ".join(f"{s * 1000 / total:.2f}" for s in whole[side])
              + f" (median {statistics.median(whole[side]) * 1000 / total:.2f})")
    print()
    print_footer("bench.ingest_bench")
    return 0

if __name__ == "__main__":
    sys.exit(main())
