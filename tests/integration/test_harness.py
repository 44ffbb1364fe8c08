"""The harness itself, against the real servers, and the Orthanc facts the hub relies on.

These tests pin behaviour of Orthanc 1.10.1 + PostgreSQL plugin 4.0 that the worker
depends on: what a refused or unreachable destination does to a store job, where
RemoteAET comes from, and which time zone Orthanc's timestamps are in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from core.settings import Settings
from ops.orthanc_config import DEFAULT_LUA
from testkit.dicom_peers import STATUS_SUCCESS, AINode, StorageSCP, send_datasets
from testkit.harness.ports import free_port
from testkit.harness.stack import OrthancRest, OrthancServer, storescu
from testkit.harness.waiting import wait_until
from testkit.synthetic import make_study, write_datasets

pytestmark = pytest.mark.integration

LOCALHOST = "127.0.0.1"


def _rest(server: OrthancServer) -> OrthancRest:
    assert server.rest is not None
    return server.rest


def _send(server: OrthancServer, datasets: list, calling_aet: str = "TESTSCU") -> None:
    statuses = send_datasets(datasets, LOCALHOST, server.dicom_port, calling_aet, server.aet)
    assert statuses == [STATUS_SUCCESS] * len(datasets)


def test_orthanc_requires_authentication(orthanc: OrthancServer) -> None:
    assert httpx.get(f"{orthanc.url}/system").status_code == 401
    assert httpx.get(f"{orthanc.url}/patients", auth=(orthanc.auth[0], "wrong-password")).status_code == 401
    assert httpx.get(f"{orthanc.url}/system", auth=orthanc.auth).status_code == 200


def test_stored_studies_reach_rest_and_the_postgres_index(
    clean_orthanc: OrthancServer, tmp_path: Path, orthanc_index_sql: Callable[..., list[tuple]]
) -> None:
    rest = _rest(clean_orthanc)
    by_dcmtk = make_study(1, 3, "XR EXTREMITY BILATERAL BONE LENGTH", accession="ACC-DCMTK")
    by_pynetdicom = make_study(2, 2, "CT CHEST", modality="CT", accession="ACC-PYNET")

    storescu(write_datasets(by_dcmtk, tmp_path / "a"), LOCALHOST, clean_orthanc.dicom_port,
             "STORESCU", clean_orthanc.aet)
    _send(clean_orthanc, by_pynetdicom, calling_aet="PYNETSCU")

    for datasets, sender in ((by_dcmtk, "STORESCU"), (by_pynetdicom, "PYNETSCU")):
        instances = rest.study_instances(str(datasets[0].StudyInstanceUID))
        assert len(instances) == len(datasets)
        for instance in instances:
            assert rest.http.get(f"/instances/{instance['ID']}/metadata/RemoteAET").text == sender

    # The index really is in PostgreSQL: the plugin's `resources` table holds every
    # level (0 patient, 1 study, 2 series, 3 instance) with Orthanc's public ids.
    counts = dict(orthanc_index_sql("SELECT resourcetype, count(*) FROM resources GROUP BY resourcetype"))
    assert counts == {0: 2, 1: 2, 2: 3, 3: 7}
    stored_ids = {row[0] for row in orthanc_index_sql("SELECT publicid FROM resources WHERE resourcetype = 3")}
    assert stored_ids == set(rest.get("/instances"))
    assert rest.get("/statistics")["CountInstances"] == 7


def test_ai_node_returns_results_into_the_same_study_from_its_own_aet(
    clean_orthanc: OrthancServer, ai_node: AINode
) -> None:
    rest = _rest(clean_orthanc)
    rest.put_modality("MERCURE", ai_node.aet, ai_node.port)
    study = make_study(1, 2, "XR EXTREMITY BILATERAL BONE LENGTH")
    study_uid = str(study[0].StudyInstanceUID)
    _send(clean_orthanc, study, calling_aet="MODALITY1")
    study_id = rest.lookup(study_uid)
    assert study_id

    job = rest.wait_job(rest.store_async("MERCURE", [study_id]))
    assert job["State"] == "Success", job
    assert ai_node.wait_returned(1, timeout=30), ai_node.errors
    series = wait_until(lambda: len(s := rest.get(f"/studies/{study_id}/series")) == 3 and s,
                        timeout=30, what="the AI series in the study")

    senders = {}
    for one in series:
        first = one["Instances"][0]
        sender = rest.http.get(f"/instances/{first}/metadata/RemoteAET").text
        tags = rest.get(f"/instances/{first}/simplified-tags")
        assert tags["StudyInstanceUID"] == study_uid
        senders[(tags["SeriesDescription"], tags["Modality"])] = sender
    assert senders.pop(("QA VISUALIZATION", "OT")) == "MERCURE"
    assert senders.pop(("AI REPORT", "SR")) == "MERCURE"
    assert list(senders.values()) == ["MODALITY1"]
    assert ai_node.received == 2
    assert ai_node.returned == 2


def test_a_refusing_destination_fails_the_store_job_and_resubmit_resends(
    clean_orthanc: OrthancServer, make_pacs: Callable[..., StorageSCP]
) -> None:
    rest = _rest(clean_orthanc)
    pacs = make_pacs("LPCHROUTER", mode="refuse")
    rest.put_modality("LPCHROUTER", pacs.aet, pacs.port)
    study = make_study(1, 2, "XR CHEST")
    _send(clean_orthanc, study)
    study_id = rest.lookup(str(study[0].StudyInstanceUID))

    job = rest.wait_job(rest.store_async("LPCHROUTER", [study_id]))
    assert job["State"] == "Failure"
    assert job["ErrorCode"] == 9  # "Error in the network protocol"
    assert "0xA700" in job["ErrorDetails"]
    assert pacs.refused >= 1 and pacs.instance_count == 0

    pacs.set_mode("accept")
    rest.post(f"/jobs/{job['ID']}/resubmit", {})
    assert rest.wait_job(job["ID"])["State"] == "Success"
    assert pacs.wait_for(2, timeout=10)
    assert pacs.duplicates() == {}


def test_a_down_destination_gives_a_network_error(
    clean_orthanc: OrthancServer, make_pacs: Callable[..., StorageSCP]
) -> None:
    rest = _rest(clean_orthanc)
    pacs = make_pacs("MODLINK")
    rest.put_modality("MODLINK", pacs.aet, pacs.port)
    study = make_study(1, 1, "XR CHEST")
    _send(clean_orthanc, study)
    study_id = rest.lookup(str(study[0].StudyInstanceUID))

    pacs.stop()
    job = rest.wait_job(rest.store_async("MODLINK", [study_id]))
    assert job["State"] == "Failure"
    assert job["ErrorCode"] == 9
    assert "Connection refused" in job["ErrorDetails"]

    pacs.start()
    assert rest.wait_job(rest.store_async("MODLINK", [study_id]))["State"] == "Success"
    assert pacs.receipts == {str(study[0].SOPInstanceUID): 1}


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_instances_without_uids_are_refused(clean_orthanc: OrthancServer, missing: str) -> None:
    """Orthanc 1.10.1 itself refuses these before the Lua filter runs (it logs
    "required tags ... are missing", with the PatientID). stack/lua/hub.lua stays as
    a guard for other Orthanc versions; either way nothing is stored."""
    rest = _rest(clean_orthanc)
    ds = make_study(1, 1, "XR CHEST")[0]
    delattr(ds, missing)
    if missing != "SOPInstanceUID":  # pynetdicom will not send without one
        statuses = send_datasets([ds], LOCALHOST, clean_orthanc.dicom_port, "TESTSCU", clean_orthanc.aet)
        assert statuses[0] != STATUS_SUCCESS
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert rest.http.post("/instances", content=buffer.getvalue()).status_code >= 400
    assert rest.get("/instances") == []


def test_lua_filter_is_loaded_and_remote_lua_is_disabled(orthanc: OrthancServer) -> None:
    rest = _rest(orthanc)
    # ExecuteLuaEnabled stays false: Lua cannot be run over REST.
    assert rest.http.post("/tools/execute-script", content=b"print(1)").status_code >= 400
    assert json.loads(orthanc.config_path.read_text())["LuaScripts"] == [str(DEFAULT_LUA)]


def test_lua_filter_refuses_instances_without_uids(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Run hub.lua's ReceivedInstanceFilter inside a second, throwaway Orthanc (SQLite
    index, remote Lua enabled): Orthanc 1.10.1 never lets such instances reach it,
    so calling the function is the only way to check it."""
    ports = {key: str(free_port()) for key in ("ORTHANC_WEB_PORT", "DICOM_PORT")}
    settings = make_settings(DICOM_STORAGE=str(tmp_path / "storage"), **ports)
    server = OrthancServer(settings, tmp_path / "orthanc", overrides={
        "Plugins": [], "PostgreSQL": None, "ExecuteLuaEnabled": True})
    server.start()
    try:
        rest = _rest(server)

        def run_filter(dicom: str) -> list[str]:
            """The filter's printed lines (execute-script returns them), then its verdict."""
            script = ("print(tostring(ReceivedInstanceFilter(" + dicom +
                      ", {RequestOrigin='DicomProtocol', RemoteAet='SCU1'}, {})))")
            return rest.http.post("/tools/execute-script", content=script.encode()).text.strip().splitlines()

        full = "StudyInstanceUID='1.2', SeriesInstanceUID='1.2.3', SOPInstanceUID='1.2.3.4'"
        assert run_filter("{" + full + ", PatientName='DOE^JANE'}") == ["true"]
        missing = run_filter("{StudyInstanceUID='1.2', SOPInstanceUID='1.2.3.4', PatientName='DOE^JANE'}")
        assert missing == [
            "hub.lua: refused an instance without SeriesInstanceUID (origin DicomProtocol, sender SCU1)",
            "false",
        ]  # the reason and the sender, never the patient's name
        empty = run_filter("{" + full.replace("'1.2.3.4'", "''") + ", PatientName='DOE^JANE'}")
        assert empty[-1] == "false" and "SOPInstanceUID" in empty[0] and "DOE" not in empty[0]
    finally:
        server.stop()


# --- time zones ----------------------------------------------------------------------


def _orthanc_timestamp(value: str) -> datetime:
    """Orthanc writes `YYYYMMDDTHHMMSS` with optional `.ffffff`, without a zone."""
    fmt = "%Y%m%dT%H%M%S.%f" if "." in value else "%Y%m%dT%H%M%S"
    return datetime.strptime(value, fmt)


def _zone_of(naive: datetime, before: datetime, after: datetime, local: ZoneInfo) -> str:
    """'utc' or 'local' depending on which reading falls within [before, after]."""
    slack = timedelta(seconds=2)
    as_utc = naive.replace(tzinfo=UTC)
    as_local = naive.replace(tzinfo=local)
    in_utc = before - slack <= as_utc <= after + slack
    in_local = before - slack <= as_local <= after + slack
    assert in_utc != in_local, f"{naive} cannot tell UTC from local time"
    return "utc" if in_utc else "local"


def test_orthanc_timestamps_are_utc_under_a_non_utc_tz(clean_orthanc: OrthancServer, pacs: StorageSCP) -> None:
    """Pinned fact: with TZ=America/Los_Angeles, Orthanc 1.10.1 writes the `/changes`
    Date, the ReceptionDate metadata and the job CreationTime/CompletionTime in UTC
    (without a zone suffix). Only its log lines are in local time."""
    assert clean_orthanc.proc is not None
    environ = Path(f"/proc/{clean_orthanc.proc.pid}/environ").read_bytes().split(b"\0")
    tz = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"TZ="))
    zone = ZoneInfo(tz)
    assert datetime.now(zone).utcoffset() != timedelta(0), "the test needs a non-UTC TZ"

    rest = _rest(clean_orthanc)
    rest.put_modality("PACS", pacs.aet, pacs.port)
    before = datetime.now(UTC)
    study = make_study(1, 1, "XR CHEST")
    _send(clean_orthanc, study)
    instance_id = rest.lookup(str(study[0].SOPInstanceUID), level="Instance")
    job = rest.wait_job(rest.store_async("PACS", [instance_id]))
    after = datetime.now(UTC)

    change = rest.get("/changes", limit=10)["Changes"][0]
    reception = rest.http.get(f"/instances/{instance_id}/metadata/ReceptionDate").text
    found = {
        "changes.Date": _zone_of(_orthanc_timestamp(change["Date"]), before, after, zone),
        "metadata.ReceptionDate": _zone_of(_orthanc_timestamp(reception), before, after, zone),
        "job.CreationTime": _zone_of(_orthanc_timestamp(job["CreationTime"]), before, after, zone),
        "job.CompletionTime": _zone_of(_orthanc_timestamp(job["CompletionTime"]), before, after, zone),
    }
    assert found == dict.fromkeys(found, "utc")
