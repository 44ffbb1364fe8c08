"""The worker against the Lua router it replaces: throughput and stability-to-delivery.

    .venv/bin/python -m bench.lua_router_bench [--studies 40] [--instances 10] [--senders 4] [--no-outage]

The router this product replaces is a Lua `OnStableStudy` callback calling
`SendToModality` for every matched study. Both routers run here in one run, one after
the other, against the same kind of Orthanc (TCP_NODELAY=1, StableAge 2 s, PostgreSQL
index) and the same dcmtk `storescp` peer:

  L: Orthanc with only the Lua router script;
  W: Orthanc without it, and `python -m worker` with the equivalent rule.

Each phase sends its own `--studies` fresh studies (all matching) from `--senders`
parallel senders as fast as Orthanc accepts. A poller sees each StableStudy change
(every 20 ms); a watcher sees when the peer holds every instance of a study
(`storescp --sort-on-study-uid`, file counts polled every 20 ms). Throughput is the
instances delivered per second from the first send to the last delivery; latency is
per study, from the StableStudy change to complete delivery.

Then (unless --no-outage) each router gets a peer that is down while the first half of
the studies is sent and becomes stable, and up for the second half: the report counts
the studies each one delivered (the Lua router never retries; the worker does).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.stack import BenchStack, bench_stack, print_footer
from bench.worker_bench import send_all
from testkit.harness.ports import free_port
from testkit.harness.waiting import WaitTimeout, wait_until
from testkit.synthetic import make_study

# Orthanc 1.10.1's Lua SendToModality takes an *instance* id: given the study id it
# logs "Unable to read attachment dicom of instance <study id>", sends nothing, and
# its Lua job still ends in Success. So the script sends the study's instances.
LUA_ROUTER = """
function OnStableStudy(studyId, tags, metadata)
  if string.find(string.upper(tags['StudyDescription'] or ''), 'BONE LENGTH', 1, true) then
    for _, instance in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))) do
      SendToModality(instance['ID'], 'PEER')
    end
  end
end
"""
RULES = """
version: 1
rules:
  - name: bone-length-to-peer
    when:
      kind: original
      all: [{tag: StudyDescription, contains: BONE LENGTH, ignore_case: true}]
    then: {deliver_to: [PEER], payload: study}
"""
POLL_S = 0.02
LABELS = {"lua": "Lua OnStableStudy + SendToModality", "worker": "worker (jobs API, batches)"}
OUTAGE_SETTLE_S = 45  # after the peer is back: the worker's retries (RETRY_CAP 5 s) fit easily


class Watch:
    """Stability seen in /changes and complete delivery seen at the peer, per StudyInstanceUID."""

    def __init__(self, rest, peer_dir: Path, per_study: int):
        self.rest, self.peer_dir, self.per_study = rest, peer_dir, per_study
        self.stable: dict[str, float] = {}  # Orthanc study id -> time seen
        self.delivered: dict[str, float] = {}  # StudyInstanceUID -> time complete at the peer
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._changes, self._peer)]

    def start(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def _changes(self) -> None:
        since = self.rest.get("/changes", last="")["Last"]
        while not self.stop.wait(POLL_S):
            page = self.rest.get("/changes", since=since, limit=1000)
            now = time.perf_counter()
            for change in page["Changes"]:
                if change["ChangeType"] == "StableStudy":
                    self.stable.setdefault(change["ID"], now)
            since = page["Last"]

    def _peer(self) -> None:
        while not self.stop.wait(POLL_S):
            now = time.perf_counter()
            for study_dir in self.peer_dir.iterdir():
                uid = study_dir.name.split("_", 1)[1]
                if uid not in self.delivered and sum(1 for _ in study_dir.iterdir()) >= self.per_study:
                    self.delivered[uid] = now

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def start_peer(stack: BenchStack, peer_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """dcmtk storescp filing each study in its own subdirectory (st_<StudyInstanceUID>)."""
    return stack.storescp(port, "--sort-on-study-uid", "st", "-od", str(peer_dir))


def run_phase(name: str, stack: BenchStack, args, lua: bool, outage: bool = False) -> dict:
    """One router against a fresh index. With `outage`, the peer is down while the first
    half of the studies is sent and becomes stable, then up for the second half."""
    settings, base = stack.settings, stack.base
    peer_dir = base / f"peer-{name}"
    peer_dir.mkdir()
    peer_port = free_port()
    peer = None if outage else start_peer(stack, peer_dir, peer_port)
    overrides = None
    if lua:
        script = base / "router.lua"
        script.write_text(LUA_ROUTER)
        overrides = {"LuaScripts": [str(script)]}
    orthanc = stack.orthanc(f"orthanc-{name}", overrides=overrides)
    worker = None
    try:
        rest = orthanc.rest
        rest.reset()  # the phases share the index database: start each from nothing
        rest.put_modality("PEER", "PEER", peer_port)
        if not lua:
            worker = stack.worker(RULES, name=f"{name}-worker")
        studies = [make_study(1, args.instances, f"XR EXTREMITY BILATERAL BONE LENGTH {name} {i}")
                   for i in range(args.studies)]
        uids = {study[0].StudyInstanceUID for study in studies}
        total = args.studies * args.instances
        watch = Watch(rest, peer_dir, args.instances).start()
        began = time.perf_counter()
        if outage:
            half = len(studies) // 2
            send_all(studies[:half], settings, senders=args.senders)
            # Both routers see the first half stable and try the peer while it is down.
            wait_until(lambda: len(watch.stable) >= half, timeout=120, what=f"{name}: first half stable")
            time.sleep(3)
            peer = start_peer(stack, peer_dir, peer_port)
            send_all(studies[half:], settings, senders=args.senders)
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: uids <= watch.delivered.keys(), timeout=OUTAGE_SETTLE_S, interval=0.1)
            watch.close()
            return {"phase": name, "delivered": len(uids & watch.delivered.keys()), "sent": len(uids)}
        send_all(studies, settings, senders=args.senders)
        wait_until(lambda: uids <= watch.delivered.keys(), timeout=120 + total / 20, interval=0.1,
                   what=f"{name}: every study at the peer")
        watch.close()
        uid_of = {oid: rest.get(f"/studies/{oid}")["MainDicomTags"]["StudyInstanceUID"] for oid in watch.stable}
        latencies = [watch.delivered[uid_of[oid]] - t for oid, t in watch.stable.items()
                     if uid_of[oid] in watch.delivered]
        elapsed = max(watch.delivered.values()) - began
        return {"phase": name, "rate": total / elapsed, "elapsed": elapsed,
                "p50": statistics.median(latencies), "p95": float(np.percentile(latencies, 95)),
                "max": max(latencies), "n": len(latencies)}
    finally:  # the next phase reuses the ports
        if worker is not None:
            worker.stop(60)
        orthanc.stop()
        if peer is not None:
            peer.terminate()
            peer.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--no-outage", action="store_true", help="skip the peer-outage phase")
    args = parser.parse_args()

    with bench_stack("lua") as stack:
        results = [run_phase("lua", stack, args, lua=True), run_phase("worker", stack, args, lua=False)]
        outages = [] if args.no_outage else [
            run_phase("lua-outage", stack, args, lua=True, outage=True),
            run_phase("worker-outage", stack, args, lua=False, outage=True)]
    print(f"{args.studies} studies x {args.instances} instances per phase, {args.senders} senders, "
          f"STABLE_AGE 2 s, worker POLL_INTERVAL 0.5 s, RETRY_BASE 1 s, RETRY_CAP 5 s")
    print()
    print("| router | delivered (inst/s, first send to last delivery) | stable -> delivered p50 (s) | p95 (s) "
          "| max (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {LABELS[r['phase']]} | {r['rate']:.0f} ({r['elapsed']:.1f} s) | {r['p50']:.2f} | "
              f"{r['p95']:.2f} | {r['max']:.2f} |")
    print()
    print(f"throughput worker/Lua = {results[1]['rate'] / results[0]['rate']:.2f}")
    if outages:
        print()
        print(f"Peer down while the first half is sent and stable, then up; {OUTAGE_SETTLE_S} s allowed after:")
        print()
        print("| router | studies delivered |")
        print("|---|---:|")
        for r in outages:
            print(f"| {LABELS[r['phase'].removesuffix('-outage')]} | {r['delivered']} / {r['sent']} |")
    print()
    print_footer("bench.lua_router_bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
