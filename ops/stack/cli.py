"""`python -m ops.stack <command>`: what the Make targets run.

    run       install what is missing, create .env if absent, start and wait for health
    start     the same without installing Debian packages
    stop      stop everything `run` started
    restart   stop, then start
    status    each service's state and a real probe, and held destinations; exit code 1 when
              a service is unhealthy (a held destination alone is not)
    logs      show (-f: follow) the services' logs
    env       create .env with generated secrets if absent
    bootstrap roles, databases, migrations and first admin (the compose `init` service, which
              also writes the Orthanc container's configuration: --orthanc-config PATH)

`--mode auto` (the default) uses Docker Compose when a Docker engine answers and
`docker compose` works, and the native stack (supervisord) otherwise.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from core.envfile import ensure_env_file
from core.settings import DEFAULTS_FILE, PROJECT_ROOT, Settings, SettingsError, env_file_path, load_settings
from ops import storage_paths
from ops.orthanc_config import COMPOSE, write_orthanc_config
from ops.rules_file import RULES_EXAMPLE, create_rules_file
from ops.stack import compose, native
from ops.stack.bootstrap import BootstrapError, bootstrap_databases
from ops.stack.layout import StackLayout
from ops.stack.packages import PrerequisiteError, ensure_packages
from ops.stack.probes import Probe, held_destinations
from ops.stack.supervisor import SupervisorError, supervisord_pid
from ops.stack.supervisor_conf import probe_host
from ops.tls import COMPILER_PACKAGES, TlsError
from ops.tooling import exitcodes


def _out(message: str) -> None:
    print(message, flush=True)


def ensure_env(env_file: Path) -> None:
    """Create `.env` with generated secrets when absent; warn when others can read it."""
    if ensure_env_file(env_file, DEFAULTS_FILE):
        _out(f"Wrote {env_file} with generated passwords (mode 600). Keep it private; never commit it.")
    mode = stat.S_IMODE(env_file.stat().st_mode)
    if mode & 0o077:
        _out(f"warning: {env_file} is readable by other users (mode {mode:o}); run: chmod 600 {env_file}")


def ensure_rules(settings: Settings) -> None:
    """Create the active rules file (ROUTING_RULES) from config/routing.example.yml when absent.

    The active file is untracked (.gitignore): saving rules in the app changes the
    site's copy, never a file of the checkout.
    """
    if create_rules_file(settings.routing_rules):
        _out(f"Wrote {settings.routing_rules} from {RULES_EXAMPLE.relative_to(PROJECT_ROOT)} "
             "(edit it, or use the app's Rules page).")


def summary(settings: Settings, env_file: Path, mode: str, probes: list[Probe]) -> str:
    """What an operator needs after `make run`: URLs, and where the credentials are."""
    local = probe_host(settings.bind_address)
    orthanc = settings.orthanc_url
    lines = [
        "",
        f"Routing hub is running ({mode}).",
        f"  Operations app     http://{local}:{settings.operator_ui_port}/   "
        f"(user {settings.app_admin_username}, password APP_ADMIN_PASSWORD)",
        f"  Orthanc Explorer   {orthanc}/app/explorer.html   "
        f"(user {settings.orthanc_username}, password ORTHANC_PASSWORD)",
        f"  Orthanc REST API   {orthanc}/   DICOMweb {orthanc}/dicom-web/",
        f"  DICOM (C-STORE)    AET {settings.orthanc_aet} on port {settings.dicom_port}"
        + "".join(f", node {n.index} on {n.dicom_port} (REST {n.web_port})" for n in settings.orthanc_node_list[1:])
        + ("   (DICOM TLS only)" if settings.dicom_tls else ""),
        f"  Workflow API       http://{local}:{settings.routing_api_port}/v1/   (bearer tokens: app, Admin > "
        f"API tokens; schema /openapi.json)",
        f"  Health, metrics    http://{local}:{settings.routing_api_port}/health   and /metrics (token)",
        f"  Study viewer       http://{local}:{settings.ohif_port}/   (OHIF; log in with an app account, or "
        f"open a study from the app's study page)",
        f"  PostgreSQL         {settings.postgres_host}:{settings.postgres_port}   databases "
        f"{settings.postgres_db} (Orthanc index) and {settings.qi_db} (QI), user {settings.postgres_user}",
        "",
        f"Passwords are in {env_file} (mode 600): ORTHANC_PASSWORD, APP_ADMIN_PASSWORD,",
        "POSTGRES_PASSWORD and GRAFANA_DB_PASSWORD. They are never printed.",
        f"The PostgreSQL superuser's password is in {settings.state_dir / 'postgres-superuser.secret'}.",
    ]
    if settings.tls_in_use:
        lines.append(f"TLS: peers and browsers trust the hub with {settings.tls_ca_path} "
                     "(README.md, 'DICOM TLS and HTTPS').")
    if mode == "native":
        lines.append(f"Logs: {StackLayout.for_settings(settings).logs_dir}   (make logs, make status, make stop)")
    unhealthy = [p for p in probes if not p.ok]
    if unhealthy:
        lines.append("Unhealthy: " + ", ".join(f"{p.name} ({p.detail})" if p.degraded else p.name for p in unhealthy))
    return "\n".join(lines)


def _settings(env_file: Path) -> Settings:
    return load_settings(env_file)


def _cmd_run(args: argparse.Namespace, mode: str, env_file: Path) -> int:
    if mode == "native" and args.command == "run":
        for package in ensure_packages():
            _out(f"installed {package}")
    ensure_env(env_file)
    settings = _settings(env_file)
    ensure_rules(settings)
    if mode == "native" and args.command == "run" and settings.https:
        # Debian's Orthanc 1.10.1 needs a small library built for its HTTPS (ops/tls.py).
        for package in ensure_packages(COMPILER_PACKAGES):
            _out(f"installed {package}")
    if mode == "compose":
        probes = compose.run(settings, env_file, _out)
    else:
        probes = native.run(settings, env_file, _out)
        _out(f"supervisord pid {supervisord_pid(StackLayout.for_settings(settings))}")
    _out(summary(settings, env_file, mode, probes))
    return exitcodes.OK if all(p.ok for p in probes) else exitcodes.FAILED


def _cmd_stop(mode: str, env_file: Path) -> int:
    settings = _settings(env_file)
    if mode == "compose":
        compose.stop(settings, env_file, _out)
    else:
        native.stop(settings, env_file, _out)
    return exitcodes.OK


def _cmd_status(mode: str, env_file: Path) -> int:
    settings = _settings(env_file)
    healthy = compose.status(settings, env_file, _out) if mode == "compose" else native.status(
        settings, env_file, _out)
    # Held destinations are reported, never counted as unhealthy: a PACS outage is not the hub failing.
    held = held_destinations(settings)
    if held:
        _out("\nDestinations on hold (their jobs wait in the queue, spending no attempts):")
        for line in held:
            _out(f"  {line}")
    if healthy:
        _out("\nAll services healthy." + (
            f" {len(held)} destination(s) on hold (above): nothing is sent to them until they answer again "
            "(outage) or are released (`./orthanc release NAME`)." if held else ""))
    else:
        _out("\nSome services are NOT healthy (see above; `make logs`).")
    return exitcodes.OK if healthy else exitcodes.FAILED


def _cmd_logs(args: argparse.Namespace, mode: str, env_file: Path) -> int:
    settings = _settings(env_file)
    if mode == "compose":
        return compose.logs(settings, env_file, args.services, args.follow, args.lines)
    return native.logs(settings, args.services, args.follow, args.lines)


def _cmd_bootstrap(args: argparse.Namespace, env_file: Path) -> int:
    settings = _settings(env_file)
    if args.orthanc_config:
        # The compose stack's Orthanc reads this file (stack/docker-compose.yml: the
        # volume orthanc-config), rendered from the same template as the native one.
        path = write_orthanc_config(settings, Path(args.orthanc_config), target=COMPOSE)
        _out(f"wrote Orthanc's configuration {path}")
    if args.orthanc2_config and settings.orthanc_nodes >= 2:
        # ORTHANC_NODES=2: the second node's (its ports), for the `orthanc2` service.
        path = write_orthanc_config(settings, Path(args.orthanc2_config), target=COMPOSE, node=2)
        _out(f"wrote the second Orthanc node's configuration {path}")
    password = Path(args.superuser_password_file).read_text().strip() if args.superuser_password_file else None
    result = bootstrap_databases(settings, password)
    _out("database ready" + ("; first app admin created" if result.admin_created else ""))
    return exitcodes.OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.stack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("auto", "native", "compose"), default="auto")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "start", "stop", "restart", "status", "env"):
        sub.add_parser(name)
    logs = sub.add_parser("logs")
    logs.add_argument("services", nargs="*",
                      help="postgres, orthanc, worker, api, app, viewer, supervisord (default: all)")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    boot = sub.add_parser("bootstrap")
    boot.add_argument("--superuser-password-file")
    boot.add_argument("--orthanc-config", metavar="PATH",
                      help="also write Orthanc's configuration for the compose stack's Orthanc container to PATH")
    boot.add_argument("--orthanc2-config", metavar="PATH",
                      help="with ORTHANC_NODES=2, also write the second Orthanc node's configuration to PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env_file = env_file_path().resolve()
    mode = args.mode
    if mode == "auto" and args.command not in ("env", "bootstrap"):
        mode = "compose" if compose.engine_available() else "native"
    try:
        if args.command == "env":
            ensure_env(env_file)
            return exitcodes.OK
        if args.command == "bootstrap":
            return _cmd_bootstrap(args, env_file)
        if args.command in ("run", "start"):
            return _cmd_run(args, mode, env_file)
        if args.command == "stop":
            return _cmd_stop(mode, env_file)
        if args.command == "restart":
            # Refused before stopping: changed storage paths must not leave the hub down.
            storage_paths.check_before_start(_settings(env_file))
            _cmd_stop(mode, env_file)
            return _cmd_run(args, mode, env_file)
        if args.command == "status":
            return _cmd_status(mode, env_file)
        return _cmd_logs(args, mode, env_file)
    except SettingsError as exc:
        print(f"{exc}\n(configuration file: {env_file})", file=sys.stderr)
        return exitcodes.CONFIG
    except (native.StackError, compose.ComposeError, SupervisorError, BootstrapError, PrerequisiteError,
            TlsError, storage_paths.StorageMoved) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
