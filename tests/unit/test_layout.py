"""The layout docs/architecture.md describes holds: arrows point one way, one module writes the core tables.

Read from the source, so a new import against the flow or a new INSERT outside the
writer fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Which top-level packages each package may import (besides itself and third parties).
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "core": set(),
    "worker": {"core"},
    "api": {"core"},
    "viewer": {"core"},
    "app": {"core"},
    "ops": {"core"},
    "testkit": {"core", "ops"},
    "bench": {"core", "ops", "testkit"},
}
FIRST_PARTY = {"core", "worker", "api", "viewer", "app", "ops", "testkit", "bench", "tests"}

# The core tables: what the worker records and operators change. core/recorder.py is their
# only writer. app_users belongs to core/auth.py and qi_settings to core/qi.py (see
# docs/architecture.md, "One writer").
CORE_TABLES = ("studies", "series", "events", "routing_jobs", "job_series", "destination_holds",
               "destination_outages", "worker_state", "worker_heartbeats", "config_status", "audit_log",
               "incidents", "alert_deliveries", "retention_status")
WRITER = "core/recorder.py"
# Writes that are not records of the pipeline, each with its reason.
WRITE_EXCEPTIONS = {
    "bench/qi_bench.py": "measures the QI triggers' own cost on plain row updates",
}
WRITE = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(?:ONLY\s+)?(" + "|".join(CORE_TABLES) + r")\b",
    re.IGNORECASE,
)


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_imports_follow_the_data_flow(package: str) -> None:
    allowed = ALLOWED_IMPORTS[package] | {package}
    crossed = [f"{path.relative_to(ROOT)}:{line} imports {target}"
               for path in _sources(package) for line, target in _imports(path)
               if target in FIRST_PARTY and target not in allowed]
    assert not crossed, "\n".join(crossed)


def test_only_the_recorder_writes_core_tables() -> None:
    writes = []
    for path in _sources(*ALLOWED_IMPORTS):
        rel = str(path.relative_to(ROOT))
        if rel == WRITER or rel in WRITE_EXCEPTIONS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WRITE.search(line):
                writes.append(f"{rel}:{number}: {line.strip()}")
    assert not writes, "core tables written outside core/recorder.py:\n" + "\n".join(writes)


def test_the_write_check_sees_a_write() -> None:
    """The pattern itself: the statements the writer uses are recognised, reads are not."""
    assert WRITE.search("INSERT INTO routing_jobs (study_id) VALUES (:s)")
    assert WRITE.search('"UPDATE series SET routed_instances = instance_count "')
    assert WRITE.search("DELETE FROM destination_holds WHERE destination = :d")
    assert WRITE.search("TRUNCATE studies, series")
    assert not WRITE.search("SELECT id FROM routing_jobs WHERE state = :s FOR UPDATE")
    assert not WRITE.search("ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at")
    assert (ROOT / WRITER).is_file() and all((ROOT / p).is_file() for p in WRITE_EXCEPTIONS)
