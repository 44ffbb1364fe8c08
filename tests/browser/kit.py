"""What the browser tests share: Debian's chromium, the app served as the stack serves it, the login form."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.settings import PROJECT_ROOT
from testkit.harness.procs import spawn, tail, terminate
from testkit.harness.waiting import wait_until

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
# The app's pages need no GPU; OHIF draws with WebGL (SwiftShader here), so the viewer's
# browser keeps it (`gpu=True`).
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", "--mute-audio"]


@contextmanager
def chromium(*, gpu: bool = False) -> Iterator[Any]:
    """A headless chromium (a playwright Browser), closed afterwards."""
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS if gpu else [*CHROMIUM_ARGS, "--disable-gpu"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, username: str, password: str) -> None:
    """Fill and send the login form (core/login_pages.py) the page is on."""
    page.get_by_label("User name", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


@contextmanager
def streamlit_app(env_file: Path, port: int, log: Path) -> Iterator[str]:
    """The operations app on 127.0.0.1:`port`, run as the stack runs it (app/server.py); yields its URL.

    Afterwards its log must hold no traceback."""
    proc = spawn(
        [sys.executable, "-m", "streamlit", "run", "app/server.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        log, env={**os.environ, "HUB_ENV_FILE": str(env_file)}, cwd=PROJECT_ROOT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{tail(log)}")
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=60, what="the Streamlit server")
        yield url
    finally:
        terminate(proc)
        assert "Traceback" not in log.read_text(errors="replace"), tail(log, 80)
