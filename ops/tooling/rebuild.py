"""`make rebuild`: rebuild what runs the stack from the pinned sources, then restart it.

Natively that is the Python environment (brought back to exactly the pinned versions,
then `pip check`ed) and the rendered configuration (re-rendered by the restart); in compose mode it is the images (`build --pull`). The
data and `.env` are untouched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from core.settings import PROJECT_ROOT, SettingsError, env_file_path, load_settings
from ops.tooling import exitcodes
from ops.tooling.control import ControlError, control_for, resolve_mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make rebuild", description=__doc__)
    parser.add_argument("--mode", default=os.environ.get("STACK_MODE", "auto"), choices=("auto", "native", "compose"))
    args = parser.parse_args(argv)
    env_file = env_file_path()
    try:
        settings = load_settings(env_file)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    mode = resolve_mode(args.mode)
    control = control_for(mode, env_file)
    if mode == "compose":
        from ops.stack import compose

        argv_build = compose.compose_argv(env_file, "build", "--pull")
        code = subprocess.call(argv_build, env=compose.compose_env(settings, env_file))
        if code != 0:
            print("error: docker compose build failed; the running stack was left as it was", file=sys.stderr)
            return exitcodes.FAILED
    else:
        print("==> bringing the Python environment to the pinned requirements", flush=True)
        requirements = str(PROJECT_ROOT / "requirements.txt")
        for argv in (["install", "-q", "-r", requirements], ["check"]):
            code = subprocess.call([sys.executable, "-m", "pip", *argv])
            if code != 0:
                print(f"error: pip {argv[0]} failed; the running stack was left as it was", file=sys.stderr)
                return exitcodes.FAILED
    try:
        print("==> restarting the stack", flush=True)
        control.stop_all()
        control.start_all()
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    print("rebuild complete")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
