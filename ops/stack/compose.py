"""The compose stack (stack/docker-compose.yml), for hosts with a Docker engine.

The same commands as the native stack, through `docker compose`. Compose reads the
values from `.env`; the storage paths are passed resolved (a relative STATE_DIR
means relative to the project, not to stack/), and the environment given to
`docker compose` is built from `.env` alone, so an operator's shell (a stray TZ or
ORTHANC_PASSWORD) cannot override the site's configuration.

Orthanc's configuration is not in the compose file: the `init` service renders
stack/orthanc/orthanc.json.template (the native stack's template too) into the volume
the Orthanc container reads. The digest of that configuration is passed to compose
(ORTHANC_CONFIG_DIGEST), so that a change to it recreates the Orthanc container.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings, read_config
from ops import datadirs, storage_paths
from ops.orthanc_config import COMPOSE, DEFAULT_LUA, orthanc_config_text, render_orthanc_config
from ops.stack.probes import Probe, probe_all, wait_healthy

Out = Callable[[str], None]
COMPOSE_FILE = PROJECT_ROOT / "stack" / "docker-compose.yml"
PROJECT_NAME = "routing-hub"
SERVICES: tuple[str, ...] = ("postgres", "init", "orthanc", "orthanc2", "worker", "api", "app", "viewer", "grafana")
# ORTHANC_NODES=2 runs the service `orthanc2` (its compose profile); compose runs at most two nodes.
COMPOSE_MAX_NODES = 2
# Files in STATE_DIR that compose mounts as secrets (generated here, mode 600).
SECRET_FILES = ("postgres-superuser.secret", "grafana-admin.secret")
# Passed through from the caller's environment: how to reach the engine, which profiles.
PASSTHROUGH = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
               "DOCKER_TLS_VERIFY", "COMPOSE_PROFILES")
# Variables the compose file uses that are not settings of `.env`: compose_env sets them.
DERIVED = ("ORTHANC_CONFIG_DIGEST", "ORTHANC2_WEB_PORT", "ORTHANC2_DICOM_PORT")


class ComposeError(RuntimeError):
    """`docker compose` failed; the message carries its output."""


def engine_available() -> bool:
    """True when a Docker engine answers and the compose plugin works."""
    for argv in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if proc.returncode != 0:
            return False
    return True


def orthanc_config_digest(settings: Settings) -> str:
    """Changes whenever the configuration `init` writes for Orthanc, or its Lua hook, does.

    Rendered here from the host's settings: they differ from the `init` container's only
    by values the compose file sets for every container (POSTGRES_HOST, DICOM_STORAGE),
    so this changes whenever `init`'s rendering does.
    """
    sha = hashlib.sha256(orthanc_config_text(render_orthanc_config(settings, target=COMPOSE)).encode())
    sha.update(DEFAULT_LUA.read_bytes())
    return sha.hexdigest()[:16]


def compose_env(settings: Settings, env_file: Path) -> dict[str, str]:
    """The environment for `docker compose`: `.env`'s values with absolute paths."""
    env = {key: os.environ[key] for key in PASSTHROUGH if key in os.environ}
    env.update(read_config(env_file))
    env.update({
        "DICOM_STORAGE": str(settings.dicom_storage),
        "POSTGRES_STORAGE": str(settings.postgres_storage),
        "STATE_DIR": str(settings.state_dir),
        "HUB_ENV_FILE": str(env_file.resolve()),
        "ORTHANC_CONFIG_DIGEST": orthanc_config_digest(settings),
        # The second node's ports (the first entries of the lists; published only with its profile).
        "ORTHANC2_WEB_PORT": str((settings.orthanc_node_web_ports or (0,))[0]),
        "ORTHANC2_DICOM_PORT": str((settings.orthanc_node_dicom_ports or (0,))[0]),
    })
    if settings.orthanc_nodes >= 2:
        profiles = [p for p in env.get("COMPOSE_PROFILES", "").split(",") if p]
        env["COMPOSE_PROFILES"] = ",".join(dict.fromkeys([*profiles, "orthanc2"]))
    return env


def compose_argv(env_file: Path, *args: str) -> list[str]:
    return ["docker", "compose", "--project-name", PROJECT_NAME, "--file", str(COMPOSE_FILE),
            "--env-file", str(env_file.resolve()), *args]


def _compose(settings: Settings, env_file: Path, *args: str, capture: bool = False) -> str:
    proc = subprocess.run(compose_argv(env_file, *args), env=compose_env(settings, env_file),
                          capture_output=capture, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stdout or "") + (proc.stderr or "") if capture else ""
        raise ComposeError(f"docker compose {' '.join(args)} failed ({proc.returncode}) {output}".strip())
    return proc.stdout or ""


def ensure_secret_files(state_dir: Path) -> None:
    """Generate the secrets compose mounts from STATE_DIR (kept there, never in .env)."""
    datadirs.create_owned(state_dir, "STATE_DIR", 0o700)  # marked when created (ops/datadirs.py)
    for name in SECRET_FILES:
        path = state_dir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")


def check_env_file(env_file: Path) -> None:
    """Compose hands the containers the project's `.env` (`env_file: ../.env`), so the
    configuration compose interpolates must be that same file."""
    if env_file.resolve() != (PROJECT_ROOT / ".env").resolve():
        raise ComposeError(f"the compose stack reads {PROJECT_ROOT / '.env'}; unset HUB_ENV_FILE ({env_file}) "
                           "or use STACK_MODE=native")


def check_no_tls(settings: Settings) -> None:
    """DICOM TLS and HTTPS are for the native stack for now: the containers would need the
    TLS files mounted, and the hub's health checks would need https (README.md, "DICOM
    TLS and HTTPS")."""
    if settings.tls_in_use:
        on = [name for name, flag in (("DICOM_TLS=on", settings.dicom_tls), ("HTTPS=on", settings.https)) if flag]
        on += [f"MODALITY_{n} (tls)" for n, m in settings.modalities.items() if m.use_tls]
        raise ComposeError(f"{', '.join(on)}: DICOM TLS and HTTPS are supported by the native stack only; "
                           "run it with STACK_MODE=native, or switch them off in .env")


def check_nodes(settings: Settings) -> None:
    """The compose file has two Orthanc services; more nodes are for the native stack (or a
    deployment of one's own: docs/scaling.md)."""
    if settings.orthanc_nodes > COMPOSE_MAX_NODES:
        raise ComposeError(f"ORTHANC_NODES={settings.orthanc_nodes}: the compose stack runs at most "
                           f"{COMPOSE_MAX_NODES} Orthanc nodes; use STACK_MODE=native")


def run(settings: Settings, env_file: Path, out: Out = print) -> list[Probe]:
    check_env_file(env_file)
    check_no_tls(settings)
    check_nodes(settings)
    ensure_secret_files(settings.state_dir)
    try:  # before the directories are created: changed storage paths must not start an empty hub
        moved = storage_paths.check_before_start(settings)
    except storage_paths.StorageMoved as exc:
        raise ComposeError(str(exc)) from None
    for line in storage_paths.describe_accepted(moved):
        out(line)
    datadirs.create_owned(settings.dicom_storage, "DICOM_STORAGE")
    # The postgres image's initdb wants an empty directory: mark it once the cluster exists.
    new_cluster = not settings.postgres_storage.exists() or not any(settings.postgres_storage.iterdir())
    settings.postgres_storage.mkdir(parents=True, exist_ok=True)
    out("Starting the compose stack (docker compose up --build --wait)")
    _compose(settings, env_file, "up", "--detach", "--build", "--wait")
    if new_cluster:
        try:
            datadirs.mark(settings.postgres_storage, "POSTGRES_STORAGE")
        except OSError as exc:
            out(f"warning: could not mark {settings.postgres_storage} as the hub's ({exc}); "
                f"run `{datadirs.MARK_COMMAND}` as root before `make uninstall`")
    try:
        probes = wait_healthy(settings, ["postgres", "orthanc", "dicom", "worker", "api", "app", "viewer"], 120)
    except TimeoutError as exc:
        raise ComposeError(f"{exc}\nsee `make logs`") from None
    if all(p.ok for p in probes):
        storage_paths.record_start(settings, "compose")
    return probes


def stop(settings: Settings, env_file: Path, out: Out = print) -> None:
    _compose(settings, env_file, "down")
    out("Stopped the compose stack (volumes and data are kept).")


def status(settings: Settings, env_file: Path, out: Out = print) -> bool:
    out(_compose(settings, env_file, "ps", "--all", capture=True))
    healthy = True
    for probe in probe_all(settings):
        healthy &= probe.ok
        out(f"{'ok  ' if probe.ok else 'FAIL'}  {probe.name:<9} {probe.url:<48} {probe.detail}")
    return healthy


def logs(settings: Settings, env_file: Path, services: list[str], follow: bool, lines: int) -> int:
    args = ["logs", "--tail", str(lines), *(["--follow"] if follow else []), *services]
    return subprocess.call(compose_argv(env_file, *args), env=compose_env(settings, env_file))
