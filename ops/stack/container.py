"""Entry point of the hub's image in the compose stack: write the settings file, then exec.

The hub reads its settings from a file only (core/settings.py ignores single
environment variables on purpose). Compose hands a container `.env`'s values as
environment variables (`env_file`), with the in-network host names and paths
overriding some of them, so this writes exactly the known settings (the keys of
config/env.defaults and MODALITY_* lines) into a private file, checks them, points
HUB_ENV_FILE at it and runs the service's command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from core.envfile import read_env_file, render_env, write_private
from core.settings import DEFAULTS_FILE, MODALITY_PREFIX, SettingsError, settings_from_values

TARGET = Path(os.environ.get("HUB_CONTAINER_ENV_FILE", "/tmp/hub/.env"))


def settings_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment's entries that are hub settings, over the defaults."""
    defaults = read_env_file(DEFAULTS_FILE)
    values = dict(defaults)
    values.update({k: v for k, v in environ.items() if k in defaults or k.startswith(MODALITY_PREFIX)})
    return values


def write_settings(environ: Mapping[str, str], target: Path = TARGET) -> Path:
    values = settings_values(environ)
    settings_from_values(values)  # fail here, with every problem listed, not in the service
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    defaults = read_env_file(DEFAULTS_FILE)
    changed = {k: v for k, v in values.items() if defaults.get(k) != v}
    write_private(target, render_env(DEFAULTS_FILE.read_text(encoding="utf-8"), changed))
    return target


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m ops.stack.container COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        target = write_settings(os.environ)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 3
    os.environ["HUB_ENV_FILE"] = str(target)
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
