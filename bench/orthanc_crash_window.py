"""The duplicate window that remains: instances a peer receives twice when Orthanc is
SIGKILLed while the worker forwards through it.

Orthanc runs with `SaveJobs` off, so a store under way at the crash is forgotten; the
worker finds `/jobs/{id}` gone and sends that batch again, whole. Each round sends
`--studies` studies, starts forwarding to a pynetdicom peer that counts receipts per
SOPInstanceUID, SIGKILLs Orthanc after a random fraction of the forwarding has been
done, restarts it, waits for every job to succeed and counts the duplicates. The worker
itself is never killed here (its kills repeat nothing: tests/reliability/test_failpoints.py).
"""

from __future__ import annotations

import argparse
import random
import sys

from sqlalchemy import text

from bench.stack import ALL_TO_PEER, bench_stack, print_footer
from core.operations import hold_destination, release_destination
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.faults import sigkill_orthanc
from testkit.harness.ports import free_port
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lines = []
    with bench_stack("crashwin") as stack:
        orthanc = stack.orthanc()
        peer = StorageSCP("PEER", free_port()).start()
        stack._cleanup.callback(peer.stop)
        assert orthanc.rest is not None
        orthanc.rest.put_modality("PEER", "PEER", peer.port)
        stack.worker(ALL_TO_PEER)
        total_dups = total_sent = 0
        for round_ in range(args.rounds):
            peer.reset()
            with stack.engine.begin() as conn:  # hold while the studies arrive and route
                hold_destination(conn, "PEER", actor="bench", source="cli")
            studies = [make_study(1, args.instances, f"CR WINDOW {round_} {i}") for i in range(args.studies)]
            for study in studies:
                send_datasets(study, "127.0.0.1", stack.settings.dicom_port, "MOD1", stack.settings.orthanc_aet)
            before = stack.count_jobs()
            wait_until(lambda before=before: stack.count_jobs("queued") >= args.studies, timeout=120,
                       what="every study routed")
            expected = args.studies * args.instances
            at = rng.uniform(0.1, 0.7)
            with stack.engine.begin() as conn:
                release_destination(conn, "PEER", actor="bench", source="cli")
            wait_until(lambda at=at, expected=expected: peer.instance_count >= at * expected, timeout=120,
                       interval=0.005, what="forwarding under way")
            with stack.engine.connect() as conn:
                in_flight = conn.execute(text(
                    "SELECT count(DISTINCT orthanc_job_id) FROM routing_jobs WHERE state = 'sending' "
                    "AND orthanc_job_id IS NOT NULL")).scalar_one()
            sigkill_orthanc(orthanc)
            wait_until(lambda: stack.count_jobs("succeeded") == stack.count_jobs(), timeout=300,
                       what="every job delivered after the crash")
            dups = sum(n - 1 for n in peer.duplicates().values())
            total_dups += dups
            total_sent += expected
            lines.append(f"round {round_ + 1}: killed at {at:.0%} of {expected} instances, "
                         f"{in_flight} Orthanc store jobs in flight -> {dups} duplicate receipts; "
                         f"all {peer.instance_count} distinct instances delivered")
            assert peer.instance_count == expected
    print(f"{args.rounds} rounds of {args.studies} studies x {args.instances} instances, SEND_BATCH="
          f"{stack.settings.send_batch}, WORKER_CONCURRENCY={stack.settings.worker_concurrency}")
    print("\n".join(lines))
    print(f"duplicates: {total_dups} of {total_sent} instances ({total_dups / total_sent:.1%})")
    print_footer("bench.orthanc_crash_window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
