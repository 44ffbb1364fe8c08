"""Fixtures of the browser tests: chromium, skipped only where Debian's package is absent
(.ci/run installs it, so CI always runs these)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.kit import CHROMIUM, chromium


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium for the app's pages (no GPU)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with chromium() as b:
        yield b


@pytest.fixture
def gl_browser() -> Iterator[Any]:
    """Chromium with WebGL, for OHIF."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with chromium(gpu=True) as b:
        yield b
