"""The active routing rules file: created from the tracked example when absent.

config/routing.yml (ROUTING_RULES) is the site's copy and is not tracked by git, so
saving rules in the app never modifies the checkout; config/routing.example.yml is
the shipped example it starts from. `make run`, `make start` and `make setup` call
`create_rules_file`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.settings import PROJECT_ROOT

RULES_EXAMPLE = PROJECT_ROOT / "config" / "routing.example.yml"


def create_rules_file(path: Path, example: Path = RULES_EXAMPLE) -> bool:
    """Copy `example` to `path` unless `path` exists; True when written.

    Written through a temporary name and renamed, so the worker's file watcher never
    sees a half-written file.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    shutil.copyfile(example, tmp)
    os.replace(tmp, path)
    return True
