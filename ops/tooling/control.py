"""How backup, restore, upgrade and uninstall stop, start and reach the stack.

The procedures in ops.tooling.backup never start processes themselves: they call a
StackControl. The native control drives ops.stack.native (what `make stop` and
`make start` run) and, while the stack is down, runs PostgreSQL alone with
`pg_ctl` for maintenance (dumps, restores, migrations). Tests use a control over the
harness's servers. Keeping this seam small is what lets the same restore code be
tested against real servers without the full supervisord stack.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from core.settings import PROJECT_ROOT, Settings
from ops import pgcluster


class ControlError(RuntimeError):
    """Stopping or starting the stack failed; the message carries the command's output."""


class StackControl(Protocol):
    def stop_all(self) -> None:
        """Stop every service of the stack (Orthanc, worker, app, PostgreSQL)."""

    def start_all(self) -> None:
        """Start the whole stack and return once it has been launched."""

    def maintenance_db(self, settings: Settings) -> AbstractContextManager[str]:
        """Context manager: PostgreSQL is accepting connections inside it.

        Yields the cluster superuser's password (needed to drop and create databases).
        """


def postgres_accepting(settings: Settings, timeout: float = 2) -> bool:
    try:
        pgcluster.wait_ready(settings.postgres_host, settings.postgres_port, timeout=timeout)
    except pgcluster.PgClusterError:
        return False
    return True


def run_make(
    target: str, env_file: Path, *, extra: dict[str, str] | None = None, timeout: float = 900, stream: bool = False
) -> None:
    """Run `make <target>` in the project with HUB_ENV_FILE set; raise on failure.

    With `stream` the output goes straight to the operator's terminal (long steps such
    as `make run` installing packages); otherwise it is captured into the error.
    """
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), **(extra or {})}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(PROJECT_ROOT), target],
        env=env, capture_output=not stream, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        output = "" if stream else f":\n{(proc.stdout + proc.stderr)[-3000:]}"
        raise ControlError(f"`make {target}` failed ({proc.returncode}){output}")


class _Control:
    """What both stack controls share: the .env they act on and where they report."""

    def __init__(self, env_file: Path, say: Callable[[str], None] = print) -> None:
        self.env_file = env_file
        self.say = say

    def _settings(self) -> Settings:
        from core.settings import load_settings

        return load_settings(self.env_file)


class NativeControl(_Control):
    """The native (supervisord) stack, through ops.stack.native, and pg_ctl for maintenance."""

    def stop_all(self) -> None:
        from ops.stack import native
        from ops.stack.supervisor import SupervisorError

        try:
            native.stop(self._settings(), self.env_file, self.say)
        except (native.StackError, SupervisorError, pgcluster.PgClusterError) as exc:
            raise ControlError(f"stopping the stack failed: {exc}") from None

    def start_all(self) -> None:
        from ops.stack import native
        from ops.stack.bootstrap import BootstrapError
        from ops.stack.supervisor import SupervisorError

        try:
            probes = native.run(self._settings(), self.env_file, self.say)
        except (native.StackError, SupervisorError, BootstrapError, pgcluster.PgClusterError) as exc:
            raise ControlError(f"starting the stack failed: {exc}") from None
        unhealthy = [p.name for p in probes if not p.ok]
        if unhealthy:
            raise ControlError(f"the stack started but is not healthy: {', '.join(unhealthy)}")

    @contextmanager
    def maintenance_db(self, settings: Settings) -> Iterator[str]:
        """Use the running cluster, or start it alone (and stop it again afterwards)."""
        password = pgcluster.superuser_password_file(settings.state_dir)
        if postgres_accepting(settings):
            yield password
            return
        datadir = settings.postgres_storage
        datadir.parent.mkdir(parents=True, exist_ok=True)
        pgcluster.init_cluster(datadir, settings.postgres_port, settings.bind_address, superuser_password=password)
        # The log goes inside the data directory: the postgres user may not reach STATE_DIR.
        pgcluster.start(datadir, settings.postgres_port, datadir / "maintenance.log", settings.bind_address)
        try:
            pgcluster.ensure_roles_and_databases(settings, superuser_password=password)
            yield password
        finally:
            pgcluster.stop(datadir)


class ComposeControl(_Control):
    """The compose stack, through ops.stack.compose. Not exercised here: no Docker engine.

    Maintenance runs against the compose `postgres` service alone, reached on
    POSTGRES_HOST:POSTGRES_PORT from the host, with the superuser password from
    STATE_DIR/postgres-superuser.secret (the secret file compose mounts).
    """

    def stop_all(self) -> None:
        from ops.stack import compose

        try:
            compose.stop(self._settings(), self.env_file, self.say)
        except compose.ComposeError as exc:
            raise ControlError(str(exc)) from None

    def start_all(self) -> None:
        from ops.stack import compose

        try:
            probes = compose.run(self._settings(), self.env_file, self.say)
        except compose.ComposeError as exc:
            raise ControlError(str(exc)) from None
        unhealthy = [p.name for p in probes if not p.ok]
        if unhealthy:
            raise ControlError(f"the stack started but is not healthy: {', '.join(unhealthy)}")

    @contextmanager
    def maintenance_db(self, settings: Settings) -> Iterator[str]:
        from ops.stack import compose

        if not postgres_accepting(settings):
            compose.ensure_secret_files(settings.state_dir)
            proc = subprocess.run(compose.compose_argv(self.env_file, "up", "--detach", "--wait", "postgres"),
                                  env=compose.compose_env(settings, self.env_file), capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                raise ControlError(f"docker compose up postgres failed: {(proc.stdout + proc.stderr)[-2000:]}")
            pgcluster.wait_ready(settings.postgres_host, settings.postgres_port, timeout=60)
        yield pgcluster.superuser_password_file(settings.state_dir)


def resolve_mode(mode: str) -> str:
    """`auto` means compose when a Docker engine answers, native otherwise (as ops.stack)."""
    if mode != "auto":
        return mode
    from ops.stack import compose

    return "compose" if compose.engine_available() else "native"


def control_for(mode: str, env_file: Path, say: Callable[[str], None] = print) -> StackControl:
    mode = resolve_mode(mode)
    if mode == "native":
        return NativeControl(env_file, say)
    if mode == "compose":
        return ComposeControl(env_file, say)
    raise ValueError(f"unknown stack mode {mode!r} (native or compose)")
