"""`make setup` (interactive) and `make quick-setup` (defaults, no questions).

Safe to re-run: the current `.env` supplies every default, existing secrets are kept
unless the operator asks for new ones, and nothing is written before the summary is
confirmed. Every answer is checked as it is typed (ops.tooling.answers), and the
whole configuration is validated by the settings loader before `.env` is written
(mode 600). Secrets are never echoed or printed: the summary says kept/generated/entered.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from core.envfile import GENERATED_SECRETS, EnvFileError, generate_secret, read_env_file, render_env, write_private
from core.settings import DEFAULTS_FILE, MODALITY_PREFIX, SettingsError, env_file_path, settings_from_values
from ops import datadirs, pgcluster, storage_paths, tls
from ops.rules_file import RULES_EXAMPLE, create_rules_file
from ops.tooling import answers, exitcodes
from ops.tooling.control import ControlError, run_make

T = TypeVar("T")

SECRET_LABELS = {
    "ORTHANC_PASSWORD": "Orthanc admin password",
    "POSTGRES_PASSWORD": "PostgreSQL password",
    "GRAFANA_DB_PASSWORD": "Grafana read-only database password",
    "APP_ADMIN_PASSWORD": "operations app first admin password",
    "ALERT_WEBHOOK_SECRET": "alert webhook signing secret",
}


class Aborted(Exception):
    """The operator declined; nothing was written."""


class Prompter:
    """Terminal questions with defaults; re-asks until the answer is valid."""

    def __init__(self, ask: Callable[[str], str] = input, ask_secret: Callable[[str], str] = getpass.getpass) -> None:
        self.ask_raw = ask
        self.ask_secret_raw = ask_secret

    def ask(self, question: str, default: str, check: Callable[[str], T]) -> T:
        while True:
            try:
                raw = self.ask_raw(f"{question} [{default}]: ").strip()
            except EOFError:
                raise Aborted("input ended") from None
            try:
                return check(raw or default)
            except ValueError as exc:
                print(f"  ! {exc}")

    def yes(self, question: str, default: bool) -> bool:
        hint = "Y/n" if default else "y/N"
        while True:
            try:
                raw = self.ask_raw(f"{question} [{hint}]: ").strip().lower()
            except EOFError:
                raise Aborted("input ended") from None
            if not raw:
                return default
            if raw in ("y", "yes", "n", "no"):
                return raw.startswith("y")
            print("  ! answer y or n")

    def secret(self, label: str) -> str:
        while True:
            try:
                first = self.ask_secret_raw(f"{label} (not shown, at least 12 characters): ")
                answers.password(first)
                if self.ask_secret_raw(f"{label} again: ") != first:
                    print("  ! the two entries differ")
                    continue
                return first
            except ValueError as exc:
                print(f"  ! {exc}")
            except EOFError:
                raise Aborted("input ended") from None


def current_values(env_file: Path) -> tuple[dict[str, str], bool]:
    """Defaults overlaid by the existing .env; True when .env existed."""
    values = read_env_file(DEFAULTS_FILE)
    if env_file.exists():
        values.update(read_env_file(env_file))
        return values, True
    return values, False


def interview(values: dict[str, str], existed: bool, prompt: Prompter) -> tuple[dict[str, str], dict[str, str]]:
    """Ask every question; return the new values and how each secret was obtained."""
    new = dict(values)
    print("\nStorage (directories are created if missing)")
    new["DICOM_STORAGE"] = prompt.ask("DICOM storage path", values["DICOM_STORAGE"], answers.storage_path)
    new["POSTGRES_STORAGE"] = prompt.ask(
        "PostgreSQL data path", values["POSTGRES_STORAGE"],
        lambda v: answers.postgres_path(v, dicom_storage=new["DICOM_STORAGE"]))

    print("\nIdentity")
    new["ORTHANC_AET"] = prompt.ask("Orthanc AE title", values["ORTHANC_AET"], answers.aet)
    new["TZ"] = prompt.ask("Time zone", values["TZ"], answers.time_zone)

    print("\nPorts (Enter keeps each one)")
    taken: dict[int, str] = {}
    for key, label in answers.PORT_KEYS:
        number = prompt.ask(f"{label} ({key})", values[key], partial(answers.port, taken=taken, key=key))
        taken[number] = key
        new[key] = str(number)
        if not existed and answers.port_in_use(number):
            print(f"  ! warning: something already listens on 127.0.0.1:{number}")

    print("\nCredentials")
    new["ORTHANC_USERNAME"] = prompt.ask("Orthanc admin user name", values["ORTHANC_USERNAME"], answers.username)
    new["APP_ADMIN_USERNAME"] = prompt.ask("Operations app admin user name", values["APP_ADMIN_USERNAME"],
                                           answers.username)
    origin = choose_secrets(values, new, prompt)

    print("\nDestinations (MODALITY_<NAME>=<AET>|<HOST>|<PORT>)")
    edit_destinations(new, prompt)
    return new, origin


def choose_secrets(values: dict[str, str], new: dict[str, str], prompt: Prompter) -> dict[str, str]:
    """Keep, generate or enter the secrets; returns SECRET -> kept|generated|entered.

    With a complete set the operator may keep them all (the default) or replace them
    all; with a partial set the present ones are kept and only the missing are made.
    """
    have = all(values.get(k) for k in GENERATED_SECRETS)
    if have and prompt.yes("Keep the existing passwords?", True):
        return dict.fromkeys(GENERATED_SECRETS, "kept")
    generate = prompt.yes("Generate strong passwords (recommended)?", True)
    origin: dict[str, str] = {}
    for key in GENERATED_SECRETS:
        if values.get(key) and not have:
            origin[key] = "kept"
        elif generate:
            new[key] = generate_secret()
            origin[key] = "generated"
        else:
            new[key] = prompt.secret(SECRET_LABELS[key])
            origin[key] = "entered"
    return origin


def edit_destinations(new: dict[str, str], prompt: Prompter) -> None:
    def show() -> None:
        lines = {k: v for k, v in new.items() if k.startswith(MODALITY_PREFIX)}
        if not lines:
            print("  (none yet)")
        for key, value in sorted(lines.items()):
            print(f"  {key[len(MODALITY_PREFIX):]}={value}")

    show()
    while True:
        try:
            raw = prompt.ask_raw("Destination NAME=AET|HOST|PORT to add or change, -NAME to remove, Enter when done: ")
        except EOFError:
            raise Aborted("input ended") from None
        raw = raw.strip()
        if not raw:
            return
        if raw.startswith("-"):
            key = MODALITY_PREFIX + raw[1:].strip().upper()
            if new.pop(key, None) is None:
                print(f"  ! no destination named {raw[1:].strip().upper()}")
            show()
            continue
        try:
            modality = answers.destination(raw)
        except ValueError as exc:
            print(f"  ! {exc}")
            continue
        new[MODALITY_PREFIX + modality.name] = modality.spec()
        show()


def fill_missing_secrets(values: dict[str, str]) -> dict[str, str]:
    origin = {}
    for key in GENERATED_SECRETS:
        if values.get(key):
            origin[key] = "kept"
        else:
            values[key] = generate_secret()
            origin[key] = "generated"
    return origin


def summary(values: dict[str, str], origin: dict[str, str]) -> str:
    rows = [("DICOM storage", values["DICOM_STORAGE"]), ("PostgreSQL data", values["POSTGRES_STORAGE"]),
            ("AE title", values["ORTHANC_AET"]), ("Time zone", values["TZ"])]
    rows += [(key, values[key]) for key, _ in answers.PORT_KEYS]
    rows += [("Orthanc user", values["ORTHANC_USERNAME"]), ("App admin", values["APP_ADMIN_USERNAME"])]
    rows += [(SECRET_LABELS[k], f"({origin.get(k, 'kept')}, not shown)") for k in GENERATED_SECRETS]
    dests = sorted((k[len(MODALITY_PREFIX):], v) for k, v in values.items() if k.startswith(MODALITY_PREFIX))
    rows += [(f"Destination {name}", spec) for name, spec in dests] or [("Destinations", "(none)")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def write_env(env_file: Path, values: dict[str, str]) -> None:
    """Write the values onto the existing .env (or the defaults), keeping its comments.

    Only settings that differ from config/env.defaults are written as changes, plus
    every MODALITY_ line; a removed destination's line is dropped.
    """
    template = env_file.read_text(encoding="utf-8") if env_file.exists() else DEFAULTS_FILE.read_text(encoding="utf-8")
    kept_lines = []
    for line in template.splitlines():
        match = re.match(r"^(MODALITY_[A-Z0-9_]*)=", line)
        if match and match.group(1) not in values:
            continue
        kept_lines.append(line)
    defaults = read_env_file(DEFAULTS_FILE)
    existing = read_env_file(env_file) if env_file.exists() else {}
    changes = {k: v for k, v in values.items() if k in existing or defaults.get(k) != v}
    env_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(env_file, render_env("\n".join(kept_lines) + "\n", changes))


def create_directories(values: dict[str, str]) -> list[str]:
    """Create the storage and state directories with the owners the services need.

    DICOM_STORAGE and STATE_DIR belong to the user running the stack (Orthanc runs as
    that user); POSTGRES_STORAGE to the `postgres` user when we are root (initdb and
    postgres refuse to run as root). Each directory created (or found empty) gets the
    hub's ownership marker, so that `make uninstall` and `make restore` may later
    delete it and nothing else (ops/datadirs.py); POSTGRES_STORAGE gets it with its
    cluster, since initdb wants an empty directory. Returns what was done, for the operator.
    """
    settings = settings_from_values(values)
    done = []
    for role, path, mode in (("DICOM_STORAGE", settings.dicom_storage, 0o750),
                             ("STATE_DIR", settings.state_dir, 0o700)):
        existed = path.exists()
        if datadirs.create_owned(path, role, mode):
            done.append(f"{'marked the empty' if existed else 'created'} {path}")
    pg_dir = settings.postgres_storage
    if not pg_dir.exists():
        pg_dir.parent.mkdir(parents=True, exist_ok=True)
        pg_dir.mkdir(mode=0o700)
        done.append(f"created {pg_dir}")
    user = pgcluster.service_user()
    if user and not pgcluster.is_initialised(pg_dir):
        entry = pwd.getpwnam(user)
        os.chown(pg_dir, entry.pw_uid, entry.pw_gid)
        pg_dir.chmod(0o700)
        done.append(f"{pg_dir} now belongs to {user}")
    problem = answers.service_user_can_reach(pg_dir)
    if problem:
        raise SettingsError(problem)
    return done


def tls_material(values: dict[str, str]) -> list[str]:
    """DICOM TLS or HTTPS on in .env and no site certificates: the local CA and the hub's
    certificate in TLS_DIR, made once (ops/tls.py; existing files are kept). Returns what
    was done, for the operator; nothing secret."""
    settings = settings_from_values(values)
    if not settings.tls_in_use or settings.tls_site_files:
        return []
    done = tls.generate(settings)
    if done:
        done.append(f"give {settings.tls_ca_path} to the modalities and PACS that use DICOM TLS with the hub "
                    "(and to browsers for HTTPS)")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make setup", description=__doc__)
    parser.add_argument("--defaults", action="store_true", help="quick setup: no questions, defaults and kept values")
    parser.add_argument("--no-start", action="store_true", help="write .env and create directories, do not start")
    parser.add_argument("--yes", action="store_true", help="do not ask for the final confirmation")
    args = parser.parse_args(argv)
    env_file = env_file_path()
    try:
        values, existed = current_values(env_file)
    except EnvFileError as exc:
        print(f"error: cannot read the current configuration:\n{exc}\nFix or remove those lines and run again.",
              file=sys.stderr)
        return exitcodes.CONFIG
    if existed:
        print(f"Existing configuration found in {env_file}: Enter keeps each current value.")
    else:
        print(f"First installation: the configuration will be written to {env_file}.")
    try:
        if args.defaults:
            origin = fill_missing_secrets(values)
            new = values
        else:
            new, origin = interview(values, existed, Prompter())
        settings_from_values(new)  # the whole configuration, as the stack will read it
        print("\nSummary\n" + summary(new, origin))
        if not (args.defaults or args.yes) and not Prompter().yes(f"\nWrite this configuration to {env_file}?", True):
            raise Aborted("not confirmed")
    except Aborted as exc:
        print(f"aborted ({exc}): nothing was written", file=sys.stderr)
        return exitcodes.ABORTED
    except SettingsError as exc:
        print(f"error: {exc}\nnothing was written", file=sys.stderr)
        return exitcodes.CONFIG
    write_env(env_file, new)
    print(f"wrote {env_file} (mode 600)")
    try:  # new storage paths: refused before anything is created when the data is elsewhere
        storage_paths.check_before_start(settings_from_values(new))
    except storage_paths.StorageMoved as exc:
        print(f"error: {exc}\n(.env was written; no directory was created)", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        for line in create_directories(new):
            print(f"  {line}")
        rules = settings_from_values(new).routing_rules
        if create_rules_file(rules):
            print(f"  wrote {rules} from the example {RULES_EXAMPLE.name}")
        for line in tls_material(new):
            print(f"  {line}")
    except (SettingsError, OSError, tls.TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.no_start:
        print("not starting the stack (--no-start); run `make run` when ready")
        return exitcodes.OK
    try:
        print("==> applying the configuration and starting the stack (make run)", flush=True)
        run_make("run", env_file, timeout=3600, stream=True)
        print("==> applying the destinations (make seed-modalities)", flush=True)
        run_make("seed-modalities", env_file, stream=True)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    print("setup complete: `make status` shows the services, `./orthanc status` their health")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
