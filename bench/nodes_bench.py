"""CPU per 1,000 instances per component, one Orthanc node against two (ORTHANC_NODES=2).

    .venv/bin/python -m bench.nodes_bench [--studies 150] [--instances 4] [--rounds 3]

Two stacks run side by side, each with its own PostgreSQL, worker and dcmtk `storescp`
peer: A has one Orthanc node, B two nodes on one index and one storage (Lock off).
Rounds alternate A, B, A, B...; in each, 4 senders send `--studies` new studies (to
node 1 in A; senders 1 and 3 to node 1, 2 and 4 to node 2 in B) and the round ends when
the worker has delivered every study to the peer. For each component the CPU it used
during the round (utime + stime from /proc/PID/stat; PostgreSQL: the postmaster, its
live backends and the exited ones it reaped) is divided by the instances. On a
2-core machine this shows the cost of coordination, not a speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.stack import BenchStack, bench_stack, print_footer
from testkit.dicom_peers import send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess
from testkit.synthetic import make_study

SENDERS = 4


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (and, with `children`, of its reaped children)."""
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(postmaster: int) -> float:
    """The whole cluster: postmaster, exited backends (reaped) and live ones."""
    total = cpu_seconds(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat(int(entry))
                if int(fields[1]) == postmaster:
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Side:
    name: str
    stack: BenchStack
    nodes: list[OrthancServer]
    worker: WorkerProcess
    postmaster: int
    sent: int = 0

    def cpu(self) -> dict[str, float]:
        parts = {f"orthanc{k + 1}": cpu_seconds(n.proc.pid) for k, n in enumerate(self.nodes) if n.proc}
        assert self.worker.proc is not None
        parts["worker"] = cpu_seconds(self.worker.proc.pid)
        parts["postgres"] = postgres_cpu(self.postmaster)
        return parts


@contextlib.contextmanager
def side(name: str, nodes: int) -> Iterator[Side]:
    overrides = {"ORTHANC_NODES": str(nodes)}
    if nodes > 1:
        overrides |= {"ORTHANC_NODE_WEB_PORTS": ",".join(str(free_port()) for _ in range(nodes - 1)),
                      "ORTHANC_NODE_DICOM_PORTS": ",".join(str(free_port()) for _ in range(nodes - 1))}
    with bench_stack(f"nodes{nodes}", **overrides) as stack:
        servers = []
        for k in range(1, nodes + 1):
            server = OrthancServer(stack.settings, stack.base / f"orthanc{k}", node=k)
            stack._cleanup.callback(server.stop)
            server.start()
            servers.append(server)
        peer_port = free_port()
        stack.storescp(peer_port, "--ignore")
        for server in servers:
            assert server.rest is not None
            server.rest.put_modality("PEER", "PEER", peer_port)
        worker = stack.worker()
        postmaster = int((stack.settings.postgres_storage / "postmaster.pid").read_text().split()[0])
        yield Side(name, stack, servers, worker, postmaster)


def run_round(s: Side, studies: int, instances: int) -> tuple[int, dict[str, float]]:
    batch = [make_study(1, instances, f"CR NODES BENCH {s.sent + i}") for i in range(studies)]
    before = s.cpu()

    def sender(index: int) -> None:
        node = s.nodes[index % len(s.nodes)]
        for study in batch[index::SENDERS]:
            statuses = send_datasets(study, "127.0.0.1", node.dicom_port, f"BENCH{index + 1}", node.aet, timeout=120)
            assert all(code == 0 for code in statuses), statuses

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.sent += studies
    wait_until(lambda: s.stack.count_jobs("succeeded") >= s.sent, timeout=600, interval=0.2,
               what=f"{s.name}: every study delivered")
    after = s.cpu()
    return studies * instances, {k: after[k] - before[k] for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=150)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"1 node": [], "2 nodes": []}
    with side("1 node", 1) as one, side("2 nodes", 2) as two:
        for number in range(args.rounds):
            for s in (one, two) if number % 2 == 0 else (two, one):
                started = time.monotonic()
                count, used = run_round(s, args.studies, args.instances)
                per_k = {k: v * 1000 / count for k, v in used.items()}
                per_k["total"] = sum(per_k.values())
                results[s.name].append(per_k)
                print(f"round {number + 1} {s.name}: {count} instances in {time.monotonic() - started:.1f} s; "
                      + ", ".join(f"{k} {v:.2f}" for k, v in per_k.items()) + " CPU-s per 1,000 instances")
    print("\nmedian CPU-s per 1,000 instances (per component; spread min-max over rounds):")
    for name, rounds in results.items():
        cells = []
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            cells.append(f"{key} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"  {name}: " + "; ".join(cells))
    print_footer("bench.nodes_bench")


if __name__ == "__main__":
    main()
