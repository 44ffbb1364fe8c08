"""OHIF's first load and a study open, through the viewer gateway, in chromium.

    .venv/bin/python -m bench.viewer_bench [--runs 5] [--later 3] [--instances 50] [--size 512] [--write]

A real PostgreSQL and Orthanc start on free loopback ports (bench/stack.py); a CT study
of --instances images of --size x --size pixels (16 bit) is stored in Orthanc and
recorded in the hub's database; the gateway runs as the stack runs it (`python -m
viewer`, uvicorn) with the pinned OHIF release (ops/stack/ohif.py). Debian's chromium
(playwright, headless, WebGL through SwiftShader: no GPU here) is logged in once as a
viewer-role user; each run then times, from the navigation to the study's URL
(/viewer?StudyInstanceUIDs=...) until the first viewport's canvas shows the image
(testkit/ohif_page.py: read back as pixels, polled every 50 ms):

- first load: a new browser profile (empty cache): OHIF's HTML, ~18 MB of JavaScript
  and its WebAssembly codecs, its configuration, then the study (search, series,
  metadata, frames), all through the gateway;
- study open, second visit: the same URL in a new tab, as the app's study page opens
  it: OHIF's files from the browser's cache (immutable, hashed names), the study's data
  fetched again (the gateway marks it no-store);
- study open, later visits (--later per run): the same again, now also with the
  JavaScript already compiled (Chrome keeps V8's code cache beside its disk cache from
  the second load of a script on): what a user who opens studies every day waits for.

Each run has its own profile directory on disk, as a user's browser has (an in-memory
"incognito" context keeps no code cache, so every open would cost what the second visit
costs).

OHIF's own console timers are reported beside (scriptToView: from its first script to
the viewer drawn; studyToFirstImage: from the study's metadata to the first image).
Target: under 3 s. With --write the figures are added to bench/RESULTS.md with this
command line (appended).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.stack import bench_stack, print_footer
from core import auth
from core.auth import SESSION_COOKIE
from core.settings import PROJECT_ROOT
from core.states import AuditSource, Role
from ops.stack.ohif import OHIF
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.viewer_proc import ViewerProcess
from testkit.ohif_page import wait_for_image
from testkit.synthetic import make_study

RESULTS = PROJECT_ROOT / "bench" / "RESULTS.md"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", "--mute-audio"]
USER = ("bench_viewer", "bench-viewer-password")
UID_PREFIX = "1.2.826.0.1.3680043.10.1"
TARGET_S = 3.0
TIMERS = ("scriptToView", "studyToFirstImage")
CASES = ("first load (empty browser cache)", "study open, second visit", "study open, later visits")


def ct_study(instances: int, size: int, study_uid: str) -> list[Any]:
    """A CT series whose images are a smooth disc plus noise, 16 bit, size x size."""
    datasets = make_study(1, instances, "CT BENCH", modality="CT", study_uid=study_uid)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = np.clip(3000 - np.hypot(xx - size / 2, yy - size / 2) * 8, 0, 4095)
    rng = np.random.default_rng(7)
    for number, ds in enumerate(datasets):
        pixels = (disc + rng.integers(0, 200, size=(size, size)) + number).clip(0, 4095).astype(np.uint16)
        ds.Rows = ds.Columns = size
        ds.PixelData = pixels.tobytes()
        ds.ImagePositionPatient = [0, 0, float(number)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
    return datasets


def _timers(messages: list[str]) -> dict[str, float]:
    """OHIF's console.timeEnd lines ("scriptToView: 812.3 ms") as seconds."""
    found: dict[str, float] = {}
    for message in messages:
        match = re.match(r"(\w+): ([0-9.]+) ms", message)
        if match and match.group(1) in TIMERS:
            found[match.group(1)] = float(match.group(2)) / 1000
    return found


def open_study(page: Any, url: str) -> dict[str, float]:
    """Navigate `page` to the study and wait for its image; seconds, and OHIF's timers."""
    messages: list[str] = []

    def listen(message: Any) -> None:
        messages.append(message.text)

    page.on("console", listen)
    started = time.perf_counter()
    page.goto(url, wait_until="commit")
    wait_for_image(page, timeout_ms=120_000)
    elapsed = time.perf_counter() - started
    page.wait_for_timeout(300)  # let OHIF print its timers
    page.remove_listener("console", listen)
    return {"total": elapsed, **_timers(messages)}


def log_in(url: str) -> str:
    """The session id the gateway's login form gives the bench's viewer-role user."""
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        answer = client.post("/login", data={"username": USER[0], "password": USER[1], "csrf": csrf.group(1)})
        assert answer.status_code == 303, answer.text
        return answer.cookies[SESSION_COOKIE]


def measure(url: str, study_url: str, runs: int, later: int) -> dict[str, list[dict[str, float]]]:
    """Each run: a new browser profile on disk (as a user's browser keeps one), the session cookie,
    then the study opened in a new tab again and again (CASES)."""
    from playwright.sync_api import sync_playwright

    results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    cookie = {"name": SESSION_COOKIE, "value": log_in(url), "url": url, "httpOnly": True, "sameSite": "Strict"}
    with sync_playwright() as pw:
        for run in range(runs):
            with tempfile.TemporaryDirectory(prefix="hub-viewer-bench-profile-") as profile:
                context = pw.chromium.launch_persistent_context(
                    profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                    viewport={"width": 1440, "height": 1000})
                try:
                    context.add_cookies([cookie])
                    for number in range(2 + later):
                        case = CASES[min(number, 2)]
                        tab = context.new_page()
                        results[case].append(open_study(tab, study_url))
                        tab.close()
                finally:
                    context.close()
            print(f"run {run + 1}: " + ", ".join(f"{case} {results[case][-1]['total']:.2f} s" for case in CASES),
                  flush=True)
    return results


def summarise(results: dict[str, list[dict[str, float]]]) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for case, runs in results.items():
        row: dict[str, float] = {}
        totals = [r["total"] for r in runs]
        row.update(median=statistics.median(totals), min=min(totals), max=max(totals))
        for timer in TIMERS:
            values = [r[timer] for r in runs if timer in r]
            if values:
                row[timer] = statistics.median(values)
        rows.append((case, row))
    return rows


def table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    lines = ["| | median (s) | min (s) | max (s) | OHIF scriptToView, median (s) | OHIF studyToFirstImage, median (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for case, row in rows:
        timers = [f"{row[t]:.2f}" if t in row else "–" for t in TIMERS]
        lines.append(f"| {case} | {row['median']:.2f} | {row['min']:.2f} | {row['max']:.2f} | "
                     f"{' | '.join(timers)} |")
    return lines


def write_results(command: str, runs: int, instances: int, size: int,
                  rows: list[tuple[str, dict[str, float]]], load: str) -> None:
    block = [
        f"## Study viewer: OHIF's first load and a study open through the gateway ({datetime.now(UTC).date()})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU(s), Python {platform.python_version()}, PostgreSQL 15, Orthanc 1.10.1 "
        f"(DICOMweb 1.7), OHIF {OHIF.version}, Debian's chromium headless (WebGL through SwiftShader, no GPU), "
        f"everything on 127.0.0.1. "
        f"Study: one CT series of {instances} images of {size}x{size} pixels, 16 bit. {runs} runs.",
        "",
        *table(rows),
        "",
        "From the navigation to the study's URL in a new tab until the first viewport's canvas shows the image "
        "(read back as pixels). Each run starts a new browser profile on disk: first load with an empty cache, "
        "so OHIF's files and the study's data all come through the gateway; second visit with OHIF's files from "
        "the browser's cache, the study's data fetched again; later visits also with OHIF's JavaScript already "
        "compiled (V8's code cache), as for a user who opens studies every day. "
        f"Load average during the runs: {load}. Target: under {TARGET_S:.0f} s; "
        + ", ".join(f"{case}: median {row['median']:.2f} s ({'met' if row['median'] < TARGET_S else 'NOT met'})"
                    for case, row in rows) + ".",
        "",
    ]
    with RESULTS.open("a", encoding="utf-8") as handle:  # appended, as bench/app_bench.py does
        handle.write("\n" + "\n".join(block))
    print(f"appended to {RESULTS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instances", type=int, default=50, help="images in the study's one series")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--later", type=int, default=3, help="later visits timed per run")
    parser.add_argument("--write", action="store_true", help="add the figures to bench/RESULTS.md")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m bench.viewer_bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not CHROMIUM.exists():
        print("Debian's chromium is needed (apt-get install chromium)", file=sys.stderr)
        return 2
    with bench_stack("viewer-bench", OHIF_PORT=str(free_port())) as stack:
        orthanc = stack.orthanc()
        n = 5000 + os.getpid() % 1000
        study_uid = f"{UID_PREFIX}.{n}"
        orthanc_study, series = app_flows.upload(orthanc.rest, ct_study(args.instances, args.size, study_uid))
        with stack.engine.begin() as conn:
            app_flows.arrive(conn, n, datetime.now(UTC), orthanc_id=orthanc_study, description="CT BENCH",
                             modality="CT", series_orthanc_id=next(iter(series.values())), uid_prefix=UID_PREFIX)
            auth.create_user(conn, *USER, Role.VIEWER, actor="bench", source=AuditSource.SETUP, rounds=4)
        gateway = ViewerProcess(stack.values, stack.base)
        stack._cleanup.callback(gateway.stop)
        gateway.start(timeout=60)
        before = os.getloadavg()[0]
        results = measure(gateway.url, f"{gateway.url}/viewer?StudyInstanceUIDs={study_uid}", args.runs, args.later)
        load = f"{before:.1f} before, {os.getloadavg()[0]:.1f} after (1-minute)"
    rows = summarise(results)
    print()
    print("\n".join(table(rows)))
    print(f"load average: {load}")
    print_footer("bench.viewer_bench")
    if args.write:
        write_results(command, args.runs, args.instances, args.size, rows, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
