"""Issue 15, part 1: DICOM identity is AE title plus network origin.

Each test replays a probe of the issue as a hostile device on the network would, from a
second loopback address (127.0.0.2; tests/security/dicom_probe.py): Orthanc listens on
every interface, so it sees that caller as another host. Modalities are registered
through the hub's own code (`make seed-modalities`' apply_modalities, from MODALITY_
lines), so what is tested is the permission set the hub gives them.

- Configuration: Orthanc checks the caller's host (natively and in compose), and no
  query/retrieve is allowed to every caller.
- A destination's or the AI node's AE title, from anywhere (their registered host
  included), gets nothing from C-FIND, C-GET or C-MOVE, and no C-MOVE reaches MODLINK.
- A modality whose MODALITY_ line enables query/retrieve may use it from its registered
  host only.
- A store as the AI's AET from the wrong address is not an AI result: it is kept
  unrouted and flagged (series kind, event, audit entry, metric, the Overview's line),
  while the same from the AI node's registered address is routed as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, text
from streamlit.testing.v1 import AppTest

from core.dicom_names import parse_modality_line
from core.orthanc_client import OrthancClient
from core.settings import PROJECT_ROOT, Settings
from ops.orthanc_config import COMPOSE, render_orthanc_config
from ops.tooling.seed import apply_modalities
from testkit.dicom_peers import StorageSCP, send_datasets
from testkit.harness.stack import OrthancServer
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import WorkerProcess, event_types, study_row
from testkit.synthetic import derive_ai_series, make_study
from tests.integration.app.conftest import AppEnv, frame_text
from tests.security.dicom_probe import ELSEWHERE, REGISTERED, retrieve, store_from

pytestmark = pytest.mark.integration

DICOM_KEYS = {
    "DicomCheckModalityHost": True,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowFindWorklist": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
}


def _seed(settings: Settings, lines: dict[str, str]) -> None:
    """Register modalities exactly as `make seed-modalities` does from these MODALITY_ lines."""
    wanted = [parse_modality_line(name, value) for name, value in lines.items()]
    with OrthancClient.from_settings(settings, timeout=15) as client:
        outcomes = apply_modalities(client, wanted)
    assert {o.action for o in outcomes} <= {"created", "updated", "unchanged"}, outcomes


def test_orthanc_checks_the_callers_host_natively_and_in_compose(hub_settings: Settings) -> None:
    """Probe: "DicomCheckModalityHost is false" (and nothing may query/retrieve without a registration)."""
    native = render_orthanc_config(hub_settings)
    # The compose stack's Orthanc reads the same template, rendered by `init`, and nothing
    # in the compose file overrides it (tests/unit/test_compose.py checks that in full).
    compose = render_orthanc_config(hub_settings, target=COMPOSE)
    orthanc = yaml.safe_load((PROJECT_ROOT / "stack" / "docker-compose.yml").read_text())["services"]["orthanc"]
    for key, wanted in DICOM_KEYS.items():
        assert native[key] is wanted, key
        assert compose[key] is wanted, key
    assert not [k for k in orthanc["environment"] if k.startswith("ORTHANC__")]


def test_destination_and_ai_aets_cannot_query_or_retrieve_from_anywhere(
    clean_orthanc: OrthancServer, hub_settings: Settings, make_pacs: Callable[..., StorageSCP]
) -> None:
    """Probe: with calling AET MERCURE, C-FIND returned names and IDs, C-GET saved instances,
    and C-MOVE sent a study to MODLINK."""
    modlink, mercure = make_pacs("MODLINK"), make_pacs("MERCURE")
    _seed(hub_settings, {"MODLINK": f"MODLINK|{REGISTERED}|{modlink.port}",
                         "MERCURE": f"MERCURE|{REGISTERED}|{mercure.port}"})
    study = make_study(1, 2, "SECRET KNEE", patient_name="HIDDEN^PATIENT")
    assert send_datasets(study, REGISTERED, clean_orthanc.dicom_port, "MOD1", clean_orthanc.aet) == [0, 0]
    port, aet = clean_orthanc.dicom_port, clean_orthanc.aet
    for calling in ("MERCURE", "MODLINK"):
        for source in (ELSEWHERE, REGISTERED):  # not even from its own host: its role needs no retrieve
            for service in ("find", "get", "move"):
                answer = retrieve(service, port, aet, calling, source, move_to="MODLINK")
                assert not answer.granted, (calling, source, service, answer)
    assert modlink.total_receipts == 0 and mercure.total_receipts == 0
    log = clean_orthanc.log_text()
    assert "HIDDEN" not in log
    # Echo and store, which their roles need, still work from their registered host.
    with OrthancClient.from_settings(hub_settings, timeout=15) as client:
        assert client.echo("MODLINK").ok
        modalities = client.modalities()
    for name in ("MODLINK", "MERCURE"):
        flags = {k: modalities[name][k] for k in ("AllowEcho", "AllowStore", "AllowFind", "AllowGet", "AllowMove")}
        assert flags == {"AllowEcho": True, "AllowStore": True, "AllowFind": False, "AllowGet": False,
                         "AllowMove": False}, name


def test_query_retrieve_enabled_by_a_modality_line_works_only_from_its_registered_host(
    clean_orthanc: OrthancServer, hub_settings: Settings, make_pacs: Callable[..., StorageSCP]
) -> None:
    """Control for the test above: the refusals are the permissions and the host check, not a broken SCP."""
    viewer, modlink = make_pacs("VIEWER"), make_pacs("MODLINK")
    _seed(hub_settings, {"VIEWER": f"VIEWER|{REGISTERED}|{viewer.port}|qr",
                         "MODLINK": f"MODLINK|{REGISTERED}|{modlink.port}"})
    study = make_study(1, 2, "CR KNEE")
    assert send_datasets(study, REGISTERED, clean_orthanc.dicom_port, "MOD1", clean_orthanc.aet) == [0, 0]
    port, aet = clean_orthanc.dicom_port, clean_orthanc.aet

    found = retrieve("find", port, aet, "VIEWER", REGISTERED)
    assert len(found.identifiers) == 1 and found.statuses[-1] == 0x0000
    got = retrieve("get", port, aet, "VIEWER", REGISTERED, study_uid=str(study[0].StudyInstanceUID))
    assert got.received == 2 and got.statuses[-1] == 0x0000
    moved = retrieve("move", port, aet, "VIEWER", REGISTERED, move_to="MODLINK",
                     study_uid=str(study[0].StudyInstanceUID))
    assert moved.statuses[-1] == 0x0000 and modlink.wait_for(2, timeout=20)

    modlink.reset()
    for service in ("find", "get", "move"):  # the same AE title from another host: refused
        answer = retrieve(service, port, aet, "VIEWER", ELSEWHERE, move_to="MODLINK",
                          study_uid=str(study[0].StudyInstanceUID))
        assert not answer.granted, (service, answer)
    time.sleep(1)
    assert modlink.total_receipts == 0


def _metric(port: int, name: str, label: str) -> float:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in body.splitlines():
        if line.startswith(f"{name}_total{{") and f'"{label}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _series(db: Engine, study_uid: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT se.id, se.kind, se.sender_aet, se.description, se.routed_at, se.instance_count FROM series se "
            "JOIN studies st ON st.id = se.study_id WHERE st.study_uid = :u ORDER BY se.id"), {"u": study_uid}
        ).mappings()]


def test_a_store_as_the_ai_from_the_wrong_address_is_not_an_ai_result(
    env: dict, workers: Callable[..., WorkerProcess], db: Engine, clean_orthanc: OrthancServer,
    hub_settings: Settings, make_pacs: Callable[..., StorageSCP], app_env: AppEnv,
    open_page: Callable[..., AppTest], tmp_path: Path,
) -> None:
    """Probe: storescu -aet MERCURE with SeriesDescription 'QA VISUALIZATION' was routed to both
    clinical routers as an AI result. With the shipped routing.yml and the AI node registered
    at its address, the forgery is kept unrouted and flagged; the real node still works."""
    peers = {name: make_pacs(name) for name in ("MERCURE", "LPCHROUTER", "LPCHTROUTER", "MODLINK")}
    _seed(hub_settings, {name: f"{name}|{REGISTERED}|{scp.port}" for name, scp in peers.items()})
    shipped = (PROJECT_ROOT / "config" / "routing.example.yml").read_text()
    assert Path(env["ROUTING_RULES"]).read_text() == shipped and env["AI_RESULT_AETS"] == "MERCURE"
    worker = workers(env)
    port = int(env["ROUTING_API_PORT"])
    routers = (peers["LPCHROUTER"], peers["LPCHTROUTER"])

    study = make_study(1, 1, "CR FOOT")  # an original no rule routes
    uid = str(study[0].StudyInstanceUID)
    assert send_datasets(study, REGISTERED, clean_orthanc.dicom_port, "MODALITY1", clean_orthanc.aet) == [0]
    wait_until(lambda: (study_row(db, uid) or {}).get("status") == "unrouted", timeout=40, what="the original")

    fake = derive_ai_series(study, "QA VISUALIZATION", "OT", n_instances=3)
    assert store_from(fake, clean_orthanc.dicom_port, clean_orthanc.aet, "MERCURE", ELSEWHERE) == [0, 0, 0]
    wait_until(lambda: "sender_rejected" in [t for t, _ in event_types(db, uid)], timeout=40, what="the flag")
    time.sleep(hub_settings.stable_age + 5)  # past StableSeries/StableStudy: the rules had their chance
    [original, forged] = _series(db, uid)
    assert (original["kind"], forged["kind"], forged["sender_aet"]) == ("original", "rejected", "MERCURE")
    assert forged["routed_at"] is None and forged["instance_count"] == 3
    with db.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM routing_jobs")).scalar_one()
        [event] = conn.execute(text("SELECT detail FROM events WHERE type = 'sender_rejected'")).scalars().all()
        audits = conn.execute(text("SELECT actor, source, after FROM audit_log "
                                   "WHERE action = 'dicom.sender_rejected'")).all()
    assert jobs == 0 and all(r.total_receipts == 0 for r in routers)
    assert (event["sender"], event["remote_ip"], event["expected"]) == ("MERCURE", ELSEWHERE, [REGISTERED])
    assert len(audits) == 1 and audits[0].actor == "worker" and audits[0].after["remote_ip"] == ELSEWHERE
    assert _metric(port, "hub_sender_rejected", "MERCURE") == 1.0
    assert study_row(db, uid)["status"] == "unrouted"

    # The app shows it, in the issue's words.
    overview = open_page("overview", as_="viewer")
    assert f"3 instances from MERCURE at {ELSEWHERE}, expected {REGISTERED}" in frame_text(overview)

    # The real AI node, from its registered address, still delivers to both routers.
    real = derive_ai_series(study, "QA VISUALIZATION", "OT")
    assert store_from(real, clean_orthanc.dicom_port, clean_orthanc.aet, "MERCURE", REGISTERED) == [0]
    assert all(r.wait_for(1, timeout=60) for r in routers), "the real AI result was not delivered"
    time.sleep(2)
    assert [r.instance_count for r in routers] == [1, 1]  # only the real result, never the forged one
    assert {s["kind"] for s in _series(db, uid)} == {"original", "rejected", "ai_result"}
    assert _metric(port, "hub_sender_rejected", "MERCURE") == 1.0
    assert worker.health()["status"] == "ok"
