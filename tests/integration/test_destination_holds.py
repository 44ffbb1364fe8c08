"""Destination holds outside the app: core.operations, the one query every surface reads,
`./orthanc hold/release/destinations`, /metrics and `make status`.

Holds are seeded as rows (tests/integration/holds_fixture.py) the way the worker writes
them, against a migrated QI database and the session's real Orthanc.
"""

from __future__ import annotations

import getpass
import itertools
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from core import operations, queries
from core.db import make_engine
from core.queries import HoldKind
from core.settings import PROJECT_ROOT
from testkit import app_flows
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancServer, QiDatabase, write_env
from tests.integration import holds_fixture

pytestmark = pytest.mark.integration
STUDY_NUMBERS = itertools.count(1)


@pytest.fixture
def engine(qi_db: QiDatabase) -> Iterator[Engine]:
    engine = make_engine(qi_db.url)
    yield engine
    engine.dispose()


def jobs(engine: Engine, destination: str, states: list[str]) -> None:
    """One job per state for `destination`, recorded like the worker does."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for state in states:
            flow = app_flows.arrive(conn, next(STUDY_NUMBERS), now - timedelta(minutes=5))
            job = app_flows.route(conn, flow, now - timedelta(minutes=4), destination)
            conn.execute(text("UPDATE routing_jobs SET state = :s WHERE id = :id"), {"s": state, "id": job})


def hold_rows(engine: Engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(text(
            "SELECT destination, kind, held_by, reason, next_probe_at IS NULL FROM destination_holds"))}


def audit_rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT actor, source, action, target, before, after FROM audit_log "
                                      "WHERE action LIKE 'destination.%' ORDER BY id")))


# --- the query and the operations ------------------------------------------------------


def test_destination_states_counts_only_jobs_a_hold_keeps_waiting(engine: Engine, qi_db: QiDatabase) -> None:
    jobs(engine, "PACS", ["queued", "failed", "sending", "dead", "cancelled", "succeeded"])
    jobs(engine, "IDLE_WITH_JOBS", ["succeeded"])
    started = holds_fixture.this_minute()
    with engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", started)
        holds_fixture.operator_hold(conn, "GONE", started, "ana", None)  # held, no jobs, not in `names`
        states = queries.destination_states(conn, ["NEW"])
    assert sorted(states) == ["GONE", "NEW", "PACS"]  # succeeded-only destinations are not listed
    pacs = states["PACS"]
    assert (pacs.held, pacs.kind, pacs.held_by, pacs.jobs_waiting) == (True, HoldKind.OUTAGE, "worker", 3)
    assert pacs.held_at == started and pacs.last_error == holds_fixture.PROBE_ERROR
    assert pacs.next_probe_at == started + timedelta(seconds=90)
    assert 0 <= pacs.held_for_s < 120
    assert states["GONE"].kind is HoldKind.OPERATOR and states["GONE"].jobs_waiting == 0
    assert not states["NEW"].held and states["NEW"].summary(qi_db.settings.zone) is None


def test_hold_takes_over_an_outage_and_release_works_for_both_kinds(engine: Engine) -> None:
    started = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", started)
    with engine.begin() as conn:
        assert operations.hold_destination(conn, "PACS", actor="ana", source="cli", reason="maintenance")
    assert hold_rows(engine)["PACS"] == ("operator", "ana", "maintenance", True)
    with engine.connect() as conn:
        held_at = conn.execute(text("SELECT held_at FROM destination_holds")).scalar_one()
    assert held_at > started + timedelta(minutes=59), "the operator's hold starts when they put it"
    with engine.begin() as conn:  # an operator hold is not taken again (nor by another operator)
        assert not operations.hold_destination(conn, "PACS", actor="bob", source="ui")
    assert hold_rows(engine)["PACS"] == ("operator", "ana", "maintenance", True)
    with engine.begin() as conn:
        assert operations.release_destination(conn, "PACS", actor="bob", source="ui")
        assert not operations.release_destination(conn, "PACS", actor="bob", source="ui")
    with engine.begin() as conn:
        holds_fixture.outage(conn, "OTHER", started)
    with engine.begin() as conn:
        assert operations.release_destination(conn, "OTHER", actor="ana", source="cli")
    assert hold_rows(engine) == {}
    entries = audit_rows(engine)
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("ana", "destination.hold", "destination:PACS"),
        ("bob", "destination.release", "destination:PACS"),
        ("ana", "destination.release", "destination:OTHER"),
    ]
    assert entries[0].before["kind"] == "outage" and entries[0].before["held_by"] == "worker"
    assert entries[0].after == {"held": True, "kind": "operator", "reason": "maintenance"}
    assert entries[1].before["kind"] == "operator" and entries[2].before["kind"] == "outage"


# --- ./orthanc hold, release, destinations -------------------------------------------------


def orthanc_cli(env_file: os.PathLike, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_ENV_FILE": str(env_file), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("SUDO_USER", None)  # the actor is then the login running the command
    return subprocess.run([str(PROJECT_ROOT / "orthanc"), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def test_cli_hold_and_release_with_exit_codes_and_audit(
    engine: Engine, qi_db: QiDatabase, clean_orthanc: OrthancServer
) -> None:
    assert clean_orthanc.rest is not None
    clean_orthanc.rest.put_modality("PACS", "PACS", free_port())
    jobs(engine, "PACS", ["queued", "failed"])
    env_file = qi_db.env_file

    unknown = orthanc_cli(env_file, "hold", "NOPE")
    assert unknown.returncode == 5 and "no destination named 'NOPE'" in unknown.stderr and "PACS" in unknown.stderr
    held = orthanc_cli(env_file, "hold", "PACS", "--reason", "PACS upgrade")
    assert held.returncode == 0, held.stderr
    assert "PACS is on hold" in held.stdout and "2 job(s) waiting" in held.stdout
    again = orthanc_cli(env_file, "hold", "PACS")
    assert again.returncode == 1 and "already on hold by" in again.stderr and "nothing changed" in again.stderr
    assert hold_rows(engine)["PACS"] == ("operator", getpass.getuser(), "PACS upgrade", True)

    listing = orthanc_cli(env_file, "destinations", "--no-echo")
    assert listing.returncode == 0, listing.stderr
    assert f"on hold by {getpass.getuser()} since" in listing.stdout and "(PACS upgrade), 2 jobs waiting" in listing.stdout

    released = orthanc_cli(env_file, "release", "PACS")
    assert released.returncode == 0 and "PACS released" in released.stdout, released.stderr
    not_held = orthanc_cli(env_file, "release", "PACS")
    assert not_held.returncode == 1 and "PACS is not on hold" in not_held.stderr
    assert orthanc_cli(env_file, "release", "NOPE").returncode == 5

    entries = audit_rows(engine)
    assert [(e.actor, e.source, e.action) for e in entries] == [
        (getpass.getuser(), "cli", "destination.hold"), (getpass.getuser(), "cli", "destination.release")]
    assert entries[0].after["reason"] == "PACS upgrade"


def test_cli_destinations_shows_outages_and_releases_them(
    engine: Engine, qi_db: QiDatabase, clean_orthanc: OrthancServer
) -> None:
    assert clean_orthanc.rest is not None
    clean_orthanc.rest.put_modality("PACS", "PACS", free_port())
    clean_orthanc.rest.put_modality("IDLE", "IDLE", free_port())
    jobs(engine, "PACS", ["queued"])
    started = holds_fixture.this_minute()
    with engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", started)
        holds_fixture.outage(conn, "DELETED", started)  # held, then removed from Orthanc
    since = started.astimezone(qi_db.settings.zone).strftime("%H:%M")
    listing = orthanc_cli(qi_db.env_file, "destinations", "--no-echo")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[1]: line for line in listing.stdout.splitlines() if line.startswith("│")}
    assert f"outage since {since}, 1 job waiting" in lines["PACS"]
    assert "since" not in lines["IDLE"]
    assert f"outage since {since}, 0 jobs waiting (not in Orthanc)" in lines["DELETED"]

    # A held destination that Orthanc no longer knows can still be released; its outage hold goes.
    released = orthanc_cli(qi_db.env_file, "release", "DELETED")
    assert released.returncode == 0 and "holds it again" in released.stdout, released.stderr
    assert list(hold_rows(engine)) == ["PACS"]


def test_cli_hold_accepts_an_env_destination_while_orthanc_is_down(
    engine: Engine, qi_db: QiDatabase, hub_values: dict[str, str], tmp_path: os.PathLike
) -> None:
    from pathlib import Path

    env_file = write_env({**hub_values, "QI_DB": qi_db.name, "ORTHANC_WEB_PORT": str(free_port()),
                          "MODALITY_PACS": "PACS|127.0.0.1|11112"}, Path(tmp_path) / "down.env")
    assert orthanc_cli(env_file, "hold", "PACS").returncode == 0
    assert hold_rows(engine)["PACS"][0] == "operator"
    assert orthanc_cli(env_file, "hold", "OTHER").returncode == 4  # cannot tell whether OTHER exists


# --- /metrics ------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body) if family.name.startswith("hub_destination")
        for sample in family.samples
    }


def test_metrics_export_held_state_age_and_waiting_jobs(engine: Engine) -> None:
    from worker.health import serve

    jobs(engine, "PACS", ["queued", "failed", "sending"])
    jobs(engine, "MODLINK", ["queued"])
    with engine.begin() as conn:
        holds_fixture.outage(conn, "PACS", datetime.now(UTC) - timedelta(minutes=10))
        holds_fixture.operator_hold(conn, "ROUTER", datetime.now(UTC) - timedelta(minutes=2), "ana", None)
    port = free_port()
    server = serve("127.0.0.1", port, engine, lambda: {"status": "ok"})
    try:
        m = scrape(port)
        held = {(dict(k[1])["destination"], dict(k[1])["kind"]): v for k, v in m.items()
                if k[0] == "hub_destination_held"}
        assert held == {("PACS", "outage"): 1, ("PACS", "operator"): 0, ("ROUTER", "operator"): 1,
                        ("ROUTER", "outage"): 0, ("MODLINK", "outage"): 0, ("MODLINK", "operator"): 0}
        since = {dict(k[1])["destination"]: v for k, v in m.items() if k[0] == "hub_destination_held_since_seconds"}
        assert 595 <= since["PACS"] < 700 and 115 <= since["ROUTER"] < 200 and since["MODLINK"] == 0
        waiting = {dict(k[1])["destination"]: v for k, v in m.items() if k[0] == "hub_destination_jobs_waiting"}
        assert waiting == {"PACS": 3, "MODLINK": 1, "ROUTER": 0}

        # Released with nothing waiting: the destination's series go, rather than keep their last value.
        with engine.begin() as conn:
            operations.release_destination(conn, "ROUTER", actor="ana", source="cli")
        assert not any(dict(k[1]).get("destination") == "ROUTER" for k in scrape(port))
    finally:
        server.shutdown()
        server.server_close()


# --- make status -------------------------------------------------------------------------------


def test_make_status_reports_holds_and_stays_healthy(
    engine: Engine, qi_db: QiDatabase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The services part is stubbed (test_native_stack runs it for real); the holds are read for real."""
    from ops.stack import cli, native

    jobs(engine, "LPCHROUTER", ["queued", "failed"])
    started = holds_fixture.this_minute()
    with engine.begin() as conn:
        holds_fixture.outage(conn, "LPCHROUTER", started)
    since = started.astimezone(qi_db.settings.zone).strftime("%H:%M")
    monkeypatch.setenv("HUB_ENV_FILE", str(qi_db.env_file))

    monkeypatch.setattr(native, "status", lambda *_a, **_k: True)
    assert cli.main(["--mode", "native", "status"]) == 0, "a PACS outage is not the hub being unhealthy"
    out = capsys.readouterr().out
    assert "Destinations on hold" in out
    assert f"  LPCHROUTER  outage since {since}, 2 jobs waiting" in out.splitlines()
    assert "All services healthy. 1 destination(s) on hold" in out

    monkeypatch.setattr(native, "status", lambda *_a, **_k: False)
    assert cli.main(["--mode", "native", "status"]) == 1
    out = capsys.readouterr().out
    assert f"LPCHROUTER  outage since {since}" in out and "NOT healthy" in out

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM destination_holds"))
    monkeypatch.setattr(native, "status", lambda *_a, **_k: True)
    assert cli.main(["--mode", "native", "status"]) == 0
    out = capsys.readouterr().out
    assert "on hold" not in out and out.rstrip().endswith("All services healthy.")
