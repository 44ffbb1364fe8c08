"""supervisord's configuration for the native stack, rendered from Settings.

Six programs: PostgreSQL (in the foreground, as the `postgres` user when we are
root), Orthanc (one program per node with ORTHANC_NODES > 1: orthanc, orthanc2, ...,
each with its own configuration file; docs/scaling.md), the worker, the workflow API (uvicorn, `python -m api`, on
ROUTING_API_PORT; it proxies the worker's /health and /metrics from
WORKER_HEALTH_PORT), the Streamlit app and the viewer gateway (uvicorn, `python -m
viewer`, on OHIF_PORT: OHIF's files from ops/stack/ohif.py's install, and DICOMweb
reads forwarded to Orthanc). Only PostgreSQL starts on its own:
the others need the roles, migrations and first admin that `ops.stack.bootstrap`
creates once PostgreSQL answers, so `ops.stack.native` starts them in order. No
secret is written here: the worker and the app read `.env` (HUB_ENV_FILE) and
Orthanc reads its own mode-600 configuration.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings
from ops import pgcluster
from ops.orthanc_config import orthanc_argv, orthanc_env
from ops.stack.layout import StackLayout
from ops.stack.ohif import dist_dir


def probe_host(bind_address: str) -> str:
    """The address to reach a service bound to `bind_address` from this machine."""
    return "127.0.0.1" if bind_address in ("0.0.0.0", "") else ("::1" if bind_address == "::" else bind_address)


def _command(argv: Sequence[str]) -> str:
    # supervisord splits `command` with shlex and expands %(...)s: escape both.
    return " ".join(shlex.quote(str(a)) for a in argv).replace("%", "%%")


def _environment(env: Mapping[str, str]) -> str:
    parts = []
    for key, value in env.items():
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        parts.append(f'{key}="{escaped}"')
    return ",".join(parts)


def _section(name: str, options: Mapping[str, object]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key}={value}" for key, value in options.items() if value is not None]
    return "\n".join(lines) + "\n"


def python_executable() -> str:
    """The interpreter of the project's virtual environment (the one running us)."""
    return sys.executable


def render_supervisord_conf(
    settings: Settings, env_file: Path, layout: StackLayout, fingerprints: Mapping[str, str] | None = None
) -> str:
    """Return the text of supervisord.conf for this stack.

    `fingerprints` ("orthanc", "hub"): digests of what each program reads at start
    (Orthanc's configuration and Lua hook; the settings). They go into the programs'
    environment, so a changed input changes the program's section, and supervisord's
    reload restarts exactly the programs concerned.
    """
    fingerprints = fingerprints or {}
    logs = layout.logs_dir
    hub_env = {"HUB_ENV_FILE": str(env_file.resolve()), "PYTHONUNBUFFERED": "1",
               "HUB_CONFIG_FINGERPRINT": fingerprints.get("hub", "")}
    common: dict[str, object] = {
        "redirect_stderr": "true",
        "stdout_logfile_maxbytes": "20MB",
        "stdout_logfile_backups": "5",
        "killasgroup": "true",
        "startretries": "3",
        "autorestart": "true",
    }
    running_as = getpass.getuser()
    pg_user = pgcluster.service_user()
    sections = [
        "; Rendered by ops/stack/supervisor_conf.py from .env; edits here are overwritten by `make run`.\n",
        _section("unix_http_server", {"file": layout.socket, "chmod": "0700"}),
        _section("supervisord", {
            "logfile": layout.supervisord_log,
            "logfile_maxbytes": "10MB",
            "logfile_backups": "3",
            "pidfile": layout.supervisord_pidfile,
            "childlogdir": logs,
            "directory": PROJECT_ROOT,
            "identifier": f"routing-hub:{layout.state_dir}",
            "umask": "027",
            "minfds": "4096",
            # Naming the user we already are silences supervisord's warning as root.
            "user": running_as if os.geteuid() == 0 else None,
        }),
        _section("rpcinterface:supervisor", {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface",
        }),
        _section("supervisorctl", {"serverurl": f"unix://{layout.socket}"}),
        _section("program:postgres", {
            "command": _command(pgcluster.postgres_argv(
                settings.postgres_storage, settings.postgres_port, settings.bind_address)),
            "user": pg_user,
            "directory": settings.postgres_storage,
            "priority": "10",
            "autostart": "true",
            "startsecs": "3",
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
            "stopsignal": "INT",
            "stopwaitsecs": "60",
            "stdout_logfile": layout.log_file("postgres"),
            **common,
            "killasgroup": "false",  # the postmaster stops its own backends
        }),
        *(_section(f"program:{node.name}", {
            "command": _command(orthanc_argv(layout.node_config(node.index))),
            "environment": _environment({**orthanc_env(settings, base={}),
                                         "HUB_CONFIG_FINGERPRINT": fingerprints.get(node.name, "")}),
            "directory": layout.state_dir,
            "priority": str(20 + node.index - 1),
            "autostart": "false",
            "startsecs": "5",
            "stopsignal": "TERM",
            "stopwaitsecs": "60",
            "stdout_logfile": layout.log_file(node.name),
            **common,
        }) for node in settings.orthanc_node_list),
        _section("program:worker", {
            "command": _command([python_executable(), "-m", "worker"]),
            "environment": _environment(hub_env),
            "directory": PROJECT_ROOT,
            "priority": "30",
            "autostart": "false",
            "startsecs": "3",
            "stopsignal": "TERM",
            # The worker lets in-flight sends finish for 20 s after SIGTERM.
            "stopwaitsecs": "45",
            "stdout_logfile": layout.log_file("worker"),
            **common,
        }),
        _section("program:api", {
            "command": _command([python_executable(), "-m", "api"]),
            "environment": _environment(hub_env),
            "directory": PROJECT_ROOT,
            "priority": "35",
            "autostart": "false",
            "startsecs": "3",
            "stopsignal": "TERM",
            "stopwaitsecs": "20",
            "stdout_logfile": layout.log_file("api"),
            **common,
        }),
        _section("program:app", {
            "command": _command([
                python_executable(), "-m", "streamlit", "run", str(PROJECT_ROOT / "app" / "server.py"),
                "--server.address", settings.bind_address,
                "--server.port", str(settings.operator_ui_port),
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
            ]),
            "environment": _environment(hub_env),
            "directory": PROJECT_ROOT,
            "priority": "40",
            "autostart": "false",
            "startsecs": "3",
            "stopsignal": "TERM",
            "stopwaitsecs": "20",
            "stdout_logfile": layout.log_file("app"),
            **common,
        }),
        _section("program:viewer", {
            "command": _command([python_executable(), "-m", "viewer", "--dist", str(dist_dir())]),
            "environment": _environment(hub_env),
            "directory": PROJECT_ROOT,
            "priority": "45",
            "autostart": "false",
            "startsecs": "3",
            "stopsignal": "TERM",
            "stopwaitsecs": "20",
            "stdout_logfile": layout.log_file("viewer"),
            **common,
        }),
    ]
    return "\n".join(sections)
