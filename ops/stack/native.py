"""The native stack's lifecycle under supervisord: run, stop, restart, status, logs.

`run` is idempotent: on a running stack it re-applies roles and migrations, starts
whatever is stopped and re-checks health; when the rendered configuration changed
(ports, paths, passwords in `.env`) it restarts the stack so the change takes effect.
Secrets are never printed: only where they are kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from core.envfile import write_private
from core.settings import Settings, read_config
from ops import datadirs, pgcluster, storage_paths, tls
from ops.orthanc_config import LOG_FILTER, orthanc_config_text, render_orthanc_config
from ops.stack import bootstrap, ohif, supervisor
from ops.stack.layout import StackLayout, services
from ops.stack.probes import PROBE_SERVICE, Probe, probe_all, wait_healthy
from ops.stack.procscan import stack_processes, terminate_in_order
from ops.stack.supervisor_conf import probe_host, render_supervisord_conf

Out = Callable[[str], None]
FAILED_STATES = ("FATAL", "EXITED", "STOPPED", "UNKNOWN")
START_TIMEOUT_S = 120


class StackError(RuntimeError):
    """The stack could not be brought to the requested state; the message says why."""


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    | {line}" for line in text)


@contextmanager
def _locked(layout: StackLayout, out: Out) -> Iterator[None]:
    datadirs.create_owned(layout.state_dir, "STATE_DIR", 0o700)  # marked when created (ops/datadirs.py)
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out("Another stack command is running for this STATE_DIR; waiting for it.")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` (mode 600) unless the file already holds it; True when written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            os.chmod(path, 0o600)
            return False
    except OSError:
        pass
    write_private(path, text)
    return True


def _digest(*parts: str | bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def _render_files(settings: Settings, env_file: Path, layout: StackLayout, tls_files: Sequence[Path] = ()) -> bool:
    """Write orthanc.json and supervisord.conf (mode 600); True when supervisord.conf changed.

    `tls_files` (ops/tls.py: certificates, key, HTTPS PEM) are part of Orthanc's
    fingerprint: a renewed certificate restarts Orthanc.
    """
    values = read_config(env_file)
    fingerprints = {"hub": _digest(*(f"{k}={values[k]}" for k in sorted(values)))}
    for node in settings.orthanc_node_list:  # ORTHANC_NODES: one configuration per node
        config = render_orthanc_config(settings, node=node.index)
        orthanc_text = orthanc_config_text(config)
        _write_if_changed(layout.node_config(node.index), orthanc_text)
        lua = [Path(p).read_bytes() for p in config.get("LuaScripts", []) if Path(p).is_file()]
        # The log filter Orthanc starts through is part of it too: a new one restarts Orthanc.
        fingerprints[node.name] = _digest(orthanc_text, *lua, LOG_FILTER.read_bytes(),
                                          *(p.read_bytes() for p in tls_files))
    text = render_supervisord_conf(settings, env_file, layout, fingerprints)
    return _write_if_changed(layout.supervisord_conf, text)


def _port_ports(settings: Settings) -> list[tuple[str, str, int]]:
    # Orthanc 1.10.1 always listens on every interface.
    bind = settings.bind_address
    return [
        ("POSTGRES_PORT", bind, settings.postgres_port),
        ("ORTHANC_WEB_PORT", "0.0.0.0", settings.orthanc_web_port),
        ("DICOM_PORT", "0.0.0.0", settings.dicom_port),
        *((f"ORTHANC_NODE_WEB_PORTS (node {n.index})", "0.0.0.0", n.web_port) for n in settings.orthanc_node_list[1:]),
        *((f"ORTHANC_NODE_DICOM_PORTS (node {n.index})", "0.0.0.0", n.dicom_port)
          for n in settings.orthanc_node_list[1:]),
        ("ROUTING_API_PORT", bind, settings.routing_api_port),
        ("WORKER_HEALTH_PORT", settings.worker_health_host, settings.worker_health_port),
        ("OPERATOR_UI_PORT", bind, settings.operator_ui_port),
        ("OHIF_PORT", bind, settings.ohif_port),
    ]


def busy_ports(settings: Settings) -> list[str]:
    """The configured ports another program already listens on (before we start)."""
    busy = []
    for name, host, port in _port_ports(settings):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{name}={port}")
    return busy


def _program_failure(layout: StackLayout, names: list[str]) -> str | None:
    try:
        infos = supervisor.processes(layout)
    except supervisor.SupervisorError as exc:
        return str(exc)
    for name in names:
        info = infos.get(name)
        if info is not None and info.state in FAILED_STATES:
            return f"{name} is {info.state} ({info.description}); last lines of {layout.log_file(name)}:\n" + log_tail(
                layout.log_file(name))
    return None


def _wait_running(layout: StackLayout, name: str, timeout: float = START_TIMEOUT_S) -> None:
    """Wait for an autostarted program to reach RUNNING (supervisord retries a BACKOFF)."""
    deadline = time.monotonic() + timeout
    while True:
        info = supervisor.processes(layout).get(name)
        if info is None:
            raise StackError(f"supervisord has no program {name!r}; see {layout.supervisord_conf}")
        if info.running:
            return
        if info.state == "FATAL":
            raise StackError(f"{name} could not start ({info.description}):\n{log_tail(layout.log_file(name))}")
        if info.state in ("STOPPED", "EXITED"):
            _start(layout, name)
        if time.monotonic() > deadline:
            raise StackError(f"{name} not running after {timeout:.0f} s:\n{log_tail(layout.log_file(name))}")
        time.sleep(0.2)


def _start(layout: StackLayout, name: str, *, wait: bool = True) -> None:
    try:
        supervisor.start_process(layout, name, wait=wait)
    except supervisor.SupervisorError as exc:
        raise StackError(f"{exc}\n{log_tail(layout.log_file(name))}") from None


def _wait_healthy(settings: Settings, layout: StackLayout, probes: list[str]) -> list[Probe]:
    programs = sorted({PROBE_SERVICE[p] for p in probes})
    try:
        return wait_healthy(settings, probes, START_TIMEOUT_S, lambda: _program_failure(layout, programs))
    except TimeoutError as exc:
        tails = "\n".join(f"  {p}: {layout.log_file(p)}\n{log_tail(layout.log_file(p), 15)}" for p in programs)
        raise StackError(f"{exc}\n{tails}") from None


def run(settings: Settings, env_file: Path, out: Out = print) -> list[Probe]:
    """Bring the whole stack up (or keep it up) and return the healthy probes."""
    layout = StackLayout.for_settings(settings)
    settings.check_storage()
    with _locked(layout, out):
        # Before anything is created: changed storage paths must not start an empty hub.
        try:
            moved = storage_paths.check_before_start(settings)
        except storage_paths.StorageMoved as exc:
            raise StackError(str(exc)) from None
        for line in storage_paths.describe_accepted(moved):
            out(line)
        layout.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        datadirs.create_owned(settings.dicom_storage, "DICOM_STORAGE")
        try:
            tls_files = tls.prepare(settings, out)  # DICOM TLS / HTTPS: generated once, checked
        except (tls.TlsError, OSError) as exc:
            raise StackError(str(exc)) from None
        try:
            ohif.ensure_ohif(out=out)  # the viewer's files: pinned, checksum-verified, once (ops/stack/ohif.py)
        except (ohif.OhifError, OSError) as exc:
            raise StackError(f"the OHIF viewer could not be installed: {exc}") from None
        conf_changed = _render_files(settings, env_file, layout, tls_files)
        up = supervisor.is_up(layout)
        if up and conf_changed:
            restarted = supervisor.update(layout, services(settings))
            if restarted:
                out("The configuration changed: restarting " + ", ".join(restarted))
        if bootstrap.init_cluster(settings):
            out(f"Created a PostgreSQL cluster in {settings.postgres_storage}")
        if not up:
            leftovers = stack_processes(settings, layout, env_file)
            if leftovers:
                out(f"Stopping {len(leftovers)} leftover process(es) of this stack: "
                    + ", ".join(f"{p.role} (pid {p.pid})" for p in leftovers))
                terminate_in_order(leftovers)
            busy = busy_ports(settings)
            if busy:
                raise StackError(
                    "these ports are already in use by another program: " + ", ".join(busy)
                    + "\nStop that program or choose other ports in .env (see `ss -ltnp`).")
            out(f"Starting supervisord (logs in {layout.logs_dir})")
            supervisor.start_supervisord(layout)
        _wait_running(layout, "postgres")
        try:
            pgcluster.wait_ready(probe_host(settings.postgres_host), settings.postgres_port, timeout=60)
        except pgcluster.PgClusterError as exc:
            raise StackError(f"{exc}\n{log_tail(layout.log_file('postgres'))}") from None
        result = bootstrap.bootstrap_databases(settings)
        out("PostgreSQL ready: roles, databases and migrations up to date"
            + ("; first app admin created" if result.admin_created else ""))
        # Side by side: the API, the app and the viewer need only PostgreSQL; the worker
        # starts once Orthanc answers. Health probes (not startsecs) say when each is up.
        # Node 1 first: on a new index it creates the schema the other nodes then share.
        _start(layout, "orthanc", wait=False)
        for name in ("api", "app", "viewer"):
            _start(layout, name, wait=False)
        _wait_healthy(settings, layout, ["orthanc", "dicom"])
        for node in settings.orthanc_node_list[1:]:
            _start(layout, node.name)
        out("Orthanc ready" if settings.orthanc_nodes == 1 else f"{settings.orthanc_nodes} Orthanc nodes ready")
        _start(layout, "worker", wait=False)
        probes = _wait_healthy(settings, layout, ["postgres", "orthanc", "dicom", "worker", "api", "app", "viewer"])
        for name in (*(n.name for n in settings.orthanc_node_list), "worker", "api", "app", "viewer"):
            _wait_running(layout, name)  # past supervisord's startsecs too, so `make status` says RUNNING
        out("Worker, API, app and viewer ready")
        if all(p.ok for p in probes):
            storage_paths.record_start(settings, "native")  # the next start compares (ops/storage_paths.py)
        return probes


def _stop_locked(settings: Settings, env_file: Path, layout: StackLayout, out: Out) -> None:
    if supervisor.is_up(layout):
        out("Stopping the viewer, the app, the API, the worker, Orthanc and PostgreSQL")
        supervisor.shutdown(layout)
    leftovers = stack_processes(settings, layout, env_file)
    if leftovers:
        out("Stopping leftover processes: " + ", ".join(f"{p.role} (pid {p.pid})" for p in leftovers))
        terminate_in_order(leftovers)
    if pgcluster.is_initialised(settings.postgres_storage) and pgcluster.is_running(settings.postgres_storage):
        pgcluster.stop(settings.postgres_storage, mode="fast")
    remaining = stack_processes(settings, layout, env_file)
    if remaining:
        raise StackError("processes of this stack are still running: "
                         + ", ".join(f"{p.role} (pid {p.pid})" for p in remaining))


def stop(settings: Settings, env_file: Path, out: Out = print) -> None:
    """Stop supervisord and everything under it; verify by pid that nothing is left."""
    layout = StackLayout.for_settings(settings)
    if not layout.state_dir.exists():
        out("The native stack is not running (no STATE_DIR).")
        return
    with _locked(layout, out):
        _stop_locked(settings, env_file, layout, out)
    out("Stopped: no process of this stack is left.")


def status(settings: Settings, env_file: Path, out: Out = print) -> bool:
    """Print each service's supervisor state and a real probe; True when all is healthy."""
    layout = StackLayout.for_settings(settings)
    healthy = True
    if supervisor.is_up(layout):
        infos = supervisor.processes(layout)
        out(f"supervisord   RUNNING   pid {supervisor.supervisord_pid(layout)}   {layout.supervisord_conf}")
        for name in services(settings):
            info = infos.get(name)
            state = info.state if info else "MISSING"
            healthy &= state == "RUNNING"
            out(f"{name:<13} {state:<9} {info.description if info else ''}")
    else:
        healthy = False
        out(f"supervisord   NOT RUNNING   (socket {layout.socket})")
        leftovers = stack_processes(settings, layout, env_file)
        for proc in leftovers:
            out(f"  leftover {proc.role} pid {proc.pid}: run `make stop` to end it")
    out("")
    for probe in probe_all(settings):
        healthy &= probe.ok
        out(f"{'ok  ' if probe.ok else 'FAIL'}  {probe.name:<9} {probe.url:<48} {probe.detail}")
    return healthy


def logs(settings: Settings, names_asked: list[str], follow: bool, lines: int) -> int:
    """Show (or follow) the services' logs with tail(1)."""
    layout = StackLayout.for_settings(settings)
    known = services(settings)
    names = names_asked or [*known, "supervisord"]
    unknown = [n for n in names if n not in (*known, "supervisord")]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(known)}, supervisord")
    files = [str(layout.log_file(n)) for n in names if layout.log_file(n).exists() or follow]
    if not files:
        raise StackError(f"no logs yet in {layout.logs_dir}")
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), *files]
    return subprocess.call(argv)
