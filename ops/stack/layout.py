"""Where the native stack keeps its state: everything lives under STATE_DIR.

One place for these paths keeps `run`, `stop`, `status` and `logs` in agreement, and
lets several stacks (a developer's and a test's) coexist on one machine as long as
their STATE_DIRs and ports differ.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

# AF_UNIX paths are limited to 107 bytes (108 with the NUL); leave some margin.
_MAX_SOCKET_PATH = 100

SERVICES: tuple[str, ...] = ("postgres", "orthanc", "worker", "api", "app", "viewer")


def services(settings: Settings) -> tuple[str, ...]:
    """SERVICES with one `orthanc<k>` program per further Orthanc node (ORTHANC_NODES)."""
    extra = tuple(node.name for node in settings.orthanc_node_list[1:])
    at = SERVICES.index("orthanc") + 1
    return (*SERVICES[:at], *extra, *SERVICES[at:])


@dataclass(frozen=True)
class StackLayout:
    """Paths of one native stack, derived from its STATE_DIR."""

    state_dir: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> StackLayout:
        return cls(settings.state_dir)

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def supervisord_conf(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def supervisord_pidfile(self) -> Path:
        return self.state_dir / "supervisord.pid"

    @property
    def supervisord_log(self) -> Path:
        return self.logs_dir / "supervisord.log"

    @property
    def orthanc_config(self) -> Path:
        return self.state_dir / "orthanc.json"

    def node_config(self, node: int) -> Path:
        """Orthanc node `node`'s configuration (ORTHANC_NODES): node 1's is `orthanc_config`."""
        return self.orthanc_config if node == 1 else self.state_dir / f"orthanc{node}.json"

    @property
    def lock_file(self) -> Path:
        """Held while a command changes the stack, so two `make run`s never interleave."""
        return self.state_dir / ".stack.lock"

    @property
    def socket(self) -> Path:
        """supervisord's control socket: in STATE_DIR, or a hashed name in the temp dir
        when STATE_DIR is too deep for a Unix socket path."""
        path = self.state_dir / "supervisor.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"hub-supervisor-{digest}.sock"

    def log_file(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"
