"""Test-only crash points: the process SIGKILLs itself at one named step of a protocol.

The exactly-once tests arm one point per worker with `HUB_FAILPOINT=<name>` or
`HUB_FAILPOINT=<name>@<destination>` in the worker's environment (read once, at import,
and only when set): the worker then dies the first time it reaches that step (for that
destination), exactly as a kill at that instant would leave it.
Unset, `hit` is one comparison against None. Production never sets it.
"""

from __future__ import annotations

import logging
import os
import signal
from enum import StrEnum

log = logging.getLogger(__name__)
ENV = "HUB_FAILPOINT"


class Failpoint(StrEnum):
    """The steps of the send protocol and of the tailer where a crash is tested."""

    AFTER_CLAIM = "after_claim_commit"  # jobs claimed (sending), nothing asked of Orthanc yet
    AFTER_STORE_ACCEPTED = "after_store_accepted"  # Orthanc accepted the store, job id not committed
    AFTER_STORE_SUCCESS = "after_store_success"  # Orthanc reported success, success not committed
    TAILER_MID_BATCH = "tailer_mid_batch"  # a change handled, the cursor commit not done


def _armed() -> tuple[Failpoint, str | None] | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    name, _, scope = value.partition("@")
    try:
        return Failpoint(name), scope or None
    except ValueError:
        raise SystemExit(f"{ENV}={value!r} is not a failpoint; use one of {', '.join(Failpoint)}") from None


ARMED = _armed()


def hit(point: Failpoint, destination: str | None = None) -> None:
    """Die here, now, with SIGKILL, if `point` (for `destination`, when scoped) is armed."""
    if ARMED is not None and ARMED[0] is point and ARMED[1] in (None, destination):
        log.warning("failpoint reached; killing this process", extra={"fields": {"failpoint": point.value}})
        os.kill(os.getpid(), signal.SIGKILL)
