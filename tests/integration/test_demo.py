"""`make demo` (testkit.demo) drives real flows through Orthanc and the worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def run_demo(env_file, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testkit.demo", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "HUB_ENV_FILE": str(env_file)}, timeout=300,
    )


def test_demo_sends_studies_through_ai_and_pacs(env, workers, db, clean_orthanc):
    worker = workers(env)
    # An earlier loopback MODLINK (a test install's): re-pointed for the demo, then put back.
    clean_orthanc.rest.put("/modalities/MODLINK", {"AET": "MODLINK", "Host": "127.0.0.1", "Port": 11112})
    result = run_demo(worker.env_file, "--studies", "6", "--leg-share", "0.5", "--ai-delay", "0.3",
                      "--seed", "7", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    with db.connect() as conn:
        statuses = dict(conn.execute(text(
            "SELECT status, count(*) FROM studies WHERE NOT orphan_ai_result GROUP BY status")).all())
        delivered = conn.execute(text(
            "SELECT count(*) FROM qi_study WHERE delivered_at IS NOT NULL AND ai_round_trip_s > 0")).scalar_one()
    legs = int(result.stdout.split("(")[1].split(" leg-length")[0])
    assert legs >= 1 and statuses.get("delivered") == legs == delivered
    assert statuses.get("unrouted", 0) == 6 - legs
    assert "LPCHROUTER:" in result.stdout and "DEMO^" not in result.stdout + result.stderr
    # Issue 18: no destination is left pointing at the demo's peers, which are gone now.
    modalities = clean_orthanc.rest.get("/modalities", expand="")
    assert {k: (m["Host"], m["Port"]) for k, m in modalities.items()} == {"MODLINK": ("127.0.0.1", 11112)}
    assert "put back" in result.stdout
    with db.connect() as conn:
        entries = conn.execute(text(
            "SELECT action, target, before->>'port', after->>'port' FROM audit_log "
            "WHERE actor = 'make demo' AND source = 'cli' ORDER BY id")).all()
    names = ("MERCURE", "LPCHROUTER", "LPCHTROUTER", "MODLINK")
    assert [(a, t) for a, t, _, _ in entries] == [
        *(("destination.update" if n == "MODLINK" else "destination.add", f"destination:{n}") for n in names),
        *(("destination.update" if n == "MODLINK" else "destination.delete", f"destination:{n}") for n in names)]
    assert entries[3][2] == "11112" and entries[-1][3] == "11112"
