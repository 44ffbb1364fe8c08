"""OHIF's first load and a study open, through the viewer gateway, in chromium.

    .venv/bin/python -m bench.viewer_bench [--runs 5] [--later 3] [--instances 50] [--size 512]
                                           [--runtime-agent] [--dist DIR] [--write]

A real PostgreSQL and Orthanc start on free loopback ports (bench/stack.py); a CT study
of --instances images of --size x --size pixels (16 bit) is stored in Orthanc and
recorded in the hub's database; the gateway runs as the stack runs it (`python -m
viewer`, uvicorn) with the pinned OHIF release (ops/stack/ohif.py). Debian's chromium
(headless, WebGL through SwiftShader: no GPU here) gets a viewer-role user's session
cookie; each run starts it with a new profile, lets it finish starting (a user's browser
is already running when they open a study from the app), then times, from the
navigation to the study's URL (/viewer?StudyInstanceUIDs=...) until the first viewport's
canvas shows the image (testkit/ohif_page.py's check: read back as pixels, polled every
50 ms). Chromium is driven over its DevTools pipe without playwright, because playwright
attaches DevTools' console (the Runtime agent) to every tab, which no user has open and
which costs OHIF's first load 0.4-1 s here (class Chromium; --runtime-agent turns it
on for comparison):

- first load: a new browser profile (empty cache): OHIF's HTML, its JavaScript as
  installed (minified by ops/stack/ohif.py: the main bundle 11 MB, 17 MB as published,
  and ~40 chunks; the WebAssembly codecs are not fetched for an uncompressed CT), its
  configuration, then the study (search, series, metadata,
  frames), all through the gateway;
- study open, second visit: the same URL in a new tab, as the app's study page opens
  it: OHIF's files from the browser's cache (immutable, hashed names), the study's data
  fetched again (the gateway marks it no-store);
- study open, later visits (--later per run): the same again, now also with the
  JavaScript already compiled (Chrome keeps V8's code cache beside its disk cache from
  the second load of a script on): what a user who opens studies every day waits for.

Each run has its own profile directory on disk, as a user's browser has (an in-memory
"incognito" context keeps no code cache, so every open would cost what the second visit
costs).

OHIF's own console timers (recorded in the page by TIMERS_JS) are reported beside (scriptToView: from its first script to
the viewer drawn; studyToFirstImage: from the study's metadata to the first image).
Target: under 3 s. With --write the figures are added to bench/RESULTS.md with this
command line (appended).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
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
from testkit.ohif_page import IMAGE_SHOWN_JS
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


# Installed before OHIF's own scripts in every tab: OHIF's console.time/timeEnd timers, kept as seconds in
# window.__hubTimers, so that they are read without DevTools' console (Runtime agent) attached.
TIMERS_JS = """(() => {
  const timers = {}, started = {};
  const time = console.time.bind(console), timeEnd = console.timeEnd.bind(console);
  console.time = (label = 'default') => { started[label] = performance.now(); time(label); };
  console.timeEnd = (label = 'default') => {
    if (label in started) timers[label] = (performance.now() - started[label]) / 1000;
    timeEnd(label);
  };
  Object.defineProperty(window, '__hubTimers', {value: timers});
})();"""
POLL_S = 0.05  # as testkit/ohif_page.wait_for_image polls
OPEN_TIMEOUT_S = 120.0
SETTLE_IDLE_CPU_S = 0.05  # the browser counts as started once its processes use less than this per second
SETTLE_MAX_S = 30.0


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system) of process `root` and its live descendants, from /proc."""
    children: dict[int, list[tuple[int, list[str]]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry.name), fields))
    tick = os.sysconf("SC_CLK_TCK")
    own = (Path("/proc") / str(root) / "stat").read_text().rsplit(")", 1)[1].split()
    total = (int(own[11]) + int(own[12])) / tick
    todo = [root]
    while todo:
        for pid, fields in children.get(todo.pop(), []):
            total += sum(int(value) for value in fields[11:15]) / tick
            todo.append(pid)
    return total


def _as_fds_3_and_4(reads: int, writes: int) -> None:
    """In the child: `reads` as fd 3 and `writes` as fd 4 (copied above 10 first, in case either is 3 or 4)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (reads, writes)]
    os.dup2(high[0], 3)
    os.dup2(high[1], 4)


class Chromium:
    """Debian's chromium driven over its DevTools pipe (--remote-debugging-pipe), with as little DevTools as
    the timing allows: the measured tab gets a navigation, `Runtime.evaluate` polls and an init script (the
    Page agent, for TIMERS_JS); the Runtime agent stays off.

    Playwright enables the Runtime agent (DevTools' console) in every tab it drives, and with it attached V8
    collects source positions and re-parses scripts on the page's main thread: 0.4-1 s more per first load
    of OHIF's 17 MB bundle on this machine (bench/RESULTS.md, "Study viewer: where OHIF's first load
    goes"). A user's browser has no DevTools open, so the bench measures without it (--runtime-agent
    measures with it, for comparison).
    """

    def __init__(self, profile: str, runtime_agent: bool = False) -> None:
        ours, chromes_in = os.pipe()
        chromes_out, theirs = os.pipe()
        # chromium reads commands on fd 3 and writes answers on fd 4
        self.proc = subprocess.Popen(
            [str(CHROMIUM), *CHROMIUM_ARGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1440,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: _as_fds_3_and_4(ours, theirs))
        os.close(ours)
        os.close(theirs)
        self.writer = os.fdopen(chromes_in, "wb", buffering=0)
        self.reader = os.fdopen(chromes_out, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.runtime_agent = runtime_agent

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = self.reader.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed its DevTools pipe (exit code {self.proc.poll()})")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def settle(self) -> float:
        """Wait until the new browser has finished starting (its own pages, e.g. the omnibox popup it
        preloads, take about a CPU-second): a user opens studies in a browser that is already running."""
        started = time.monotonic()
        before = _cpu_seconds(self.proc.pid)
        while time.monotonic() - started < SETTLE_MAX_S:
            time.sleep(1.0)
            now = _cpu_seconds(self.proc.pid)
            if now - before < SETTLE_IDLE_CPU_S:
                break
            before = now
        return time.monotonic() - started

    def open_study(self, url: str) -> dict[str, float]:
        """Open `url` in a new tab and wait for its image; seconds, and OHIF's timers."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)  # for the script below; no V8 agent
            self.send("Page.addScriptToEvaluateOnNewDocument", {"source": TIMERS_JS}, session)
            if self.runtime_agent:
                self.send("Runtime.enable", session=session)
            started = time.perf_counter()
            self.send("Page.navigate", {"url": url}, session)
            while not self.evaluate(f"({IMAGE_SHOWN_JS})()", session):
                if time.perf_counter() - started > OPEN_TIMEOUT_S:
                    raise TimeoutError(f"no image after {OPEN_TIMEOUT_S:.0f} s: {self.evaluate('document.title', session)}")
                time.sleep(POLL_S)
            elapsed = time.perf_counter() - started
            time.sleep(0.3)  # OHIF ends its timers right after the first image
            timers = self.evaluate("window.__hubTimers || {}", session)
        finally:
            self.send("Target.closeTarget", {"targetId": target})
        return {"total": elapsed, **{name: timers[name] for name in TIMERS if name in timers}}

    def evaluate(self, expression: str, session: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):  # already gone
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.writer.close()
        self.reader.close()


def log_in(url: str) -> str:
    """The session id the gateway's login form gives the bench's viewer-role user."""
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        answer = client.post("/login", data={"username": USER[0], "password": USER[1], "csrf": csrf.group(1)})
        assert answer.status_code == 303, answer.text
        return answer.cookies[SESSION_COOKIE]


def measure(url: str, study_url: str, runs: int, later: int, runtime_agent: bool = False,
            ) -> dict[str, list[dict[str, float]]]:
    """Each run: a new browser profile on disk (as a user's browser keeps one), the session cookie, the
    browser left to finish starting, then the study opened in a new tab again and again (CASES)."""
    results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    cookie = {"name": SESSION_COOKIE, "value": log_in(url), "url": url, "httpOnly": True, "sameSite": "Strict"}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="hub-viewer-bench-profile-") as profile:
            browser = Chromium(profile, runtime_agent)
            try:
                browser.send("Storage.setCookies", {"cookies": [cookie]})
                settled = browser.settle()
                for number in range(2 + later):
                    results[CASES[min(number, 2)]].append(browser.open_study(study_url))
            finally:
                browser.close()
        print(f"run {run + 1} (browser settled in {settled:.0f} s): "
              + ", ".join(f"{case} {results[case][-1]['total']:.2f} s" for case in CASES), flush=True)
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
                  rows: list[tuple[str, dict[str, float]]], load: str, runtime_agent: bool) -> None:
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
        "(read back as pixels). Each run starts a new browser profile on disk and lets the browser finish starting; "
        + ("DevTools' Runtime agent on in every tab (--runtime-agent). " if runtime_agent else
           "DevTools' console (Runtime agent) off, as in a user's browser. ")
        + "First load with an empty cache, "
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
    parser.add_argument("--runtime-agent", action="store_true",
                        help="enable DevTools' Runtime agent in each tab, as playwright does (for comparison)")
    parser.add_argument("--dist", type=Path, default=None,
                        help="serve this OHIF dist instead of the installed one (ops/stack/ohif.py), e.g. the "
                             "release as published, to compare it with the install")
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
        gateway = ViewerProcess(stack.values, stack.base, dist=args.dist)
        stack._cleanup.callback(gateway.stop)
        gateway.start(timeout=60)
        before = os.getloadavg()[0]
        results = measure(gateway.url, f"{gateway.url}/viewer?StudyInstanceUIDs={study_uid}", args.runs, args.later,
                          args.runtime_agent)
        load = f"{before:.1f} before, {os.getloadavg()[0]:.1f} after (1-minute)"
    rows = summarise(results)
    print()
    print("\n".join(table(rows)))
    print(f"load average: {load}")
    print_footer("bench.viewer_bench")
    if args.write:
        write_results(command, args.runs, args.instances, args.size, rows, load, args.runtime_agent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
