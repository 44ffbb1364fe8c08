"""`make demo`: real flows through the running stack, with a simulated AI node and PACS.

Starts, in this process and on 127.0.0.1 only, a mercure-like AI node and three
storage SCPs named like the seed deployment's destinations, points Orthanc's
MERCURE, LPCHROUTER, LPCHTROUTER and MODLINK modalities at them, and sends synthetic
studies to Orthanc's DICOM port: leg-length studies (routed through the AI by the
shipped rules) and other studies (recorded, not routed). The worker does the rest,
so the app's pages and the QI views show real flows on a fresh install.

It refuses to touch a modality of those names that points anywhere but loopback:
the demo is for a fresh or test install, never for a hospital's real destinations.
When it ends (or is interrupted) it puts those destinations back as they were: it
deletes the ones it added and restores the ones it re-pointed, so no destination is
left pointing at a peer that no longer exists. Each change, both ways, is an audit
entry (source `cli`, actor `make demo`).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from core.db import engine_for
from core.dicom_names import Modality
from core.orthanc_client import OrthancClient, OrthancError
from core.recorder import audit
from core.settings import Settings, SettingsError, load_settings
from core.states import AuditSource
from ops.tooling import exitcodes
from testkit.dicom_peers import LOOPBACK, AINode, StorageSCP, free_port, send_datasets
from testkit.synthetic import make_study

PACS_NAMES = ("LPCHROUTER", "LPCHTROUTER", "MODLINK")
ACTOR = "make demo"
OTHER_DESCRIPTIONS = ("CT HEAD WO CONTRAST", "XR CHEST 2 VIEWS", "MR KNEE LEFT", "US ABDOMEN")


class DemoRefused(RuntimeError):
    """The demo would change a destination that is not a loopback demo peer."""


def check_modalities(existing: dict[str, dict], names: list[str]) -> None:
    """Refuse when one of `names` is among Orthanc's modalities with a non-loopback host."""
    for name in names:
        config = existing.get(name)
        if config and config.get("Host") not in (LOOPBACK, "localhost", "::1"):
            raise DemoRefused(
                f"Orthanc already has a destination {name} at {config.get('Host')}; the demo only "
                "runs where these names are unused or point at loopback (a fresh or test install)."
            )


def start_peers(settings: Settings, out_dir: Path, ai_delay: float) -> tuple[AINode, dict[str, StorageSCP]]:
    ai = AINode(aet=settings.ai_modality[:16], port=free_port(), orthanc_host=LOOPBACK,
                orthanc_dicom_port=settings.dicom_port, orthanc_aet=settings.orthanc_aet,
                delay_s=ai_delay, quiet_s=1.0, out_dir=out_dir / "ai").start()
    pacs = {name: StorageSCP(name, free_port(), out_dir / name).start() for name in PACS_NAMES}
    return ai, pacs


def _plain(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the audit log keeps of a destination (as the Destinations page records it)."""
    if config is None:
        return None
    return {"aet": config.get("AET"), "host": config.get("Host"), "port": config.get("Port")}


def _audit(engine: Engine, action: str, name: str, before: dict[str, Any] | None,
           after: dict[str, Any] | None) -> None:
    with engine.begin() as conn:
        audit(conn, actor=ACTOR, source=AuditSource.CLI, action=action, target=f"destination:{name}",
              before=before, after=after)


def register(orthanc: OrthancClient, engine: Engine, saved: dict[str, dict[str, Any] | None],
             peers: dict[str, tuple[str, int]]) -> None:
    """Point each demo destination at its loopback peer (`peers`: name -> (AET, port)), audited."""
    for name, (aet, port) in peers.items():
        orthanc.put_modality(Modality(name, aet, LOOPBACK, port))
        _audit(engine, "destination.update" if saved.get(name) else "destination.add", name,
               _plain(saved.get(name)), {"aet": aet, "host": LOOPBACK, "port": port})


def put_back(orthanc: OrthancClient, engine: Engine, saved: dict[str, dict[str, Any] | None],
             names: list[str]) -> list[str]:
    """Restore the destinations of `names` to `saved` (delete those that did not exist), audited.

    Returns the problems; every destination is tried even when one fails.
    """
    problems = []
    current = orthanc.modalities()
    for name in names:
        before = saved.get(name)
        try:
            if before is None:
                if name in current:
                    orthanc.delete_modality(name)
                    _audit(engine, "destination.delete", name, _plain(current[name]), None)
            else:
                orthanc.request("PUT", f"/modalities/{name}", json=before)
                _audit(engine, "destination.update", name, _plain(current.get(name)), _plain(before))
        except (OrthancError, SQLAlchemyError) as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def send_studies(settings: Settings, count: int, leg_share: float, rng: random.Random) -> int:
    """Send `count` studies; returns how many are leg-length studies (AI route)."""
    legs = 0
    for i in range(count):
        leg = rng.random() < leg_share
        legs += leg
        description = "XR EXTREMITY BILATERAL BONE LENGTH" if leg else rng.choice(OTHER_DESCRIPTIONS)
        study = make_study(1, rng.randint(2, 6), description, modality="CR" if leg else "OT",
                           patient_name=f"DEMO^PATIENT{i:03d}")
        statuses = send_datasets(study, LOOPBACK, settings.dicom_port, f"DEMO_MOD{rng.randint(1, 3)}",
                                 settings.orthanc_aet)
        if any(s != 0 for s in statuses):
            raise RuntimeError(f"Orthanc refused a demo study (C-STORE statuses {sorted(set(statuses))})")
        time.sleep(rng.uniform(0.1, 0.6))
    return legs


def wait_for_results(pacs: dict[str, StorageSCP], ai_studies: int, timeout: float) -> bool:
    """Wait until every AI-routed study's results reached both routers and MODLINK."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [len({r.study_instance_uid for r in scp.history}) for scp in pacs.values()]
        if all(n >= ai_studies for n in done):
            return True
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="studies to send (default 20)")
    parser.add_argument("--leg-share", type=float, default=0.6, help="share of leg-length studies (0-1)")
    parser.add_argument("--ai-delay", type=float, default=3.0, help="seconds the simulated AI 'thinks'")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the flows")
    parser.add_argument("--keep-running", action="store_true", help="keep the peers up until Ctrl-C")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable demo")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG
    orthanc = OrthancClient.from_settings(settings, timeout=15)
    names = [settings.ai_modality, *PACS_NAMES]
    try:
        orthanc.system()
        existing = orthanc.modalities()
        check_modalities(existing, names)
    except OrthancError as exc:
        print(f"Orthanc is not reachable ({exc}); start the stack with `make run` first.", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except DemoRefused as exc:
        print(exc, file=sys.stderr)
        return exitcodes.ABORTED
    saved = {name: existing.get(name) for name in names}
    engine = engine_for(settings)
    out_dir = Path(tempfile.mkdtemp(prefix="hub-demo-"))
    ai, pacs = start_peers(settings, out_dir, args.ai_delay)
    try:
        register(orthanc, engine, saved, {settings.ai_modality: (ai.aet, ai.port),
                                          **{name: (scp.aet, scp.port) for name, scp in pacs.items()}})
        print(f"Simulated peers on {LOOPBACK}: {settings.ai_modality}:{ai.port}, "
              + ", ".join(f"{n}:{s.port}" for n, s in pacs.items()))
        legs = send_studies(settings, args.studies, args.leg_share, random.Random(args.seed))
        print(f"Sent {args.studies} studies ({legs} leg-length studies for the AI route).")
        ok = wait_for_results(pacs, legs, args.timeout)
        for name, scp in pacs.items():
            print(f"  {name}: {scp.instance_count} instances received")
        print(f"  {settings.ai_modality}: {ai.received} instances received, {ai.returned} results returned")
        print(f"Open the app: http://{settings.bind_address}:{settings.operator_ui_port}/")
        if not ok:
            print("Not every AI result was delivered in time: is the worker running (`make status`)?",
                  file=sys.stderr)
            return exitcodes.FAILED
        if args.keep_running:
            print("Peers stay up; Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return exitcodes.OK
    except KeyboardInterrupt:
        return exitcodes.OK
    finally:
        problems = put_back(orthanc, engine, saved, names)
        print("Destinations put back as they were before the demo: " + ", ".join(names) if not problems else
              "Could not put back every demo destination (check the Destinations page):\n  " + "\n  ".join(problems),
              file=sys.stderr if problems else sys.stdout)
        ai.stop()
        for scp in pacs.values():
            scp.stop()
        orthanc.close()
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
