"""Destinations that go down and come back on a fixed, seeded schedule.

A `Flapper` runs one background thread per storage SCP. Each thread alternates up
and down periods drawn from its own `random.Random(seed, aet)`, so a run is
reproducible from its seed (thread timing aside).

Two ways of being down:
- "stop": the SCP closes its listening port (connection refused). Associations
  already open run to their end, so the outage begins and ends at association
  boundaries and no store is ever cut in the middle.
- "refuse": the SCP keeps accepting associations but answers every C-STORE with
  0xA700 (out of resources), so a store job running at that moment fails part-way,
  after some of its instances were stored.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from testkit.dicom_peers import StorageSCP

MODES = ("stop", "refuse")


@dataclass(frozen=True)
class Flap:
    at: float  # seconds since the flapper started
    aet: str
    state: str  # "down" or "up"


@dataclass
class Flapper:
    """Flap `scps` until `stop()`; `stop()` always leaves every SCP up and accepting."""

    scps: Sequence[StorageSCP]
    seed: int
    mode: str = "stop"
    up_s: tuple[float, float] = (1.0, 3.0)
    down_s: tuple[float, float] = (0.5, 2.0)
    history: list[Flap] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode is one of {MODES}")

    def start(self) -> Flapper:
        self._t0 = time.monotonic()
        for scp in self.scps:
            thread = threading.Thread(target=self._flap, args=(scp,), name=f"flap-{scp.aet}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for scp in self.scps:
            self._set(scp, up=True)

    @property
    def downs(self) -> int:
        with self._lock:
            return sum(1 for f in self.history if f.state == "down")

    def _flap(self, scp: StorageSCP) -> None:
        rng = random.Random(f"{self.seed}:{scp.aet}")
        while not self._halt.wait(rng.uniform(*self.up_s)):
            self._set(scp, up=False)
            self._halt.wait(rng.uniform(*self.down_s))
            self._set(scp, up=True)

    def _set(self, scp: StorageSCP, *, up: bool) -> None:
        if (scp.running and scp.mode == "accept") == up:
            return
        if self.mode == "stop":
            if up:
                scp.start()
            else:
                scp.stop()
        else:
            scp.set_mode("accept" if up else "refuse")
        with self._lock:
            self.history.append(Flap(round(time.monotonic() - self._t0, 3), scp.aet, "up" if up else "down"))
