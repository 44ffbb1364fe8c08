"""No patient name or ID in any log the hub's processes write, Orthanc's included.

The test sends instances Orthanc must refuse (no StudyInstanceUID, no
SeriesInstanceUID: Orthanc 1.10.1 names the PatientID when it refuses those) and a
storable study that a refusing PACS makes the worker retry, all for a patient with a
unique name and ID. Then it reads every log of the session: Orthanc's (the session's
and any other test's), every worker's, PostgreSQL's, and every other `*.log` under
pytest's base temporary directory. None may hold that patient's name or ID, nor a
synthetic patient's (testkit.synthetic's `SYN########` IDs and the names the bad-input
suite sends). In a full run (`make test`) tests/badinput runs before tests/security,
so its logs are read too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from ops.logredact import redact
from ops.orthanc_config import LOG_FILTER
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, all_jobs_final, rules_file, send
from testkit.synthetic import make_study
from tests.badinput.test_malformed_dicom import send_raw_file

pytestmark = pytest.mark.integration

TOKEN = uuid.uuid4().hex[:10].upper()
CANARY_NAME = f"CANARYNAME{TOKEN}^GIVEN{TOKEN}"
CANARY_ID = f"CANARYID{TOKEN}"
# Patients of the other suites: testkit.synthetic's generated IDs and default name, and the
# names the bad-input suite gives its odd-but-storable studies (as sent and as stored).
SYNTHETIC_PHI = re.compile(r"\bSYN\d{8}\b|SYNTHETIC\^PATIENT|M(?:Ü|)LLER\^J(?:Ö|)RG|BROKEN\^|P{64}")


def _canary_study(description: str) -> list[Dataset]:
    return make_study(1, 1, description, patient_id=CANARY_ID, patient_name=CANARY_NAME)


def _refused_without(tag: str, tmp_path: Path) -> tuple[Path, str]:
    ds = _canary_study(f"XR NO {tag}")[0]
    delattr(ds, tag)
    path = tmp_path / f"no-{tag}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def session_logs(basetemp: Path, extra: list[Path]) -> list[Path]:
    """Every log file of this test session."""
    found = {p for p in basetemp.rglob("*.log") if p.is_file()}
    found.update(p for p in extra if p.is_file())
    return sorted(found)


def phi_hits(paths: list[Path], needles: tuple[str, ...]) -> list[str]:
    """`file:line: text` for every line holding a needle or a synthetic patient's name or ID."""
    hits = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if any(n in line for n in needles) or SYNTHETIC_PHI.search(line):
                hits.append(f"{path}:{number}: {line[:300]}")
    return hits


def test_no_patient_name_or_id_in_any_log(
    env, workers, db, clean_orthanc, hub_settings, make_pacs, pg_base_dir: Path, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log_before = len(clean_orthanc.log_text())

    # 1. Refused by Orthanc: its error line is where the PatientID used to be written.
    for tag in ("StudyInstanceUID", "SeriesInstanceUID"):
        path, _ = _refused_without(tag, tmp_path)
        assert send_raw_file(path, clean_orthanc.dicom_port, clean_orthanc.aet) != 0
    wait_until(lambda: clean_orthanc.log_text()[log_before:].count("required tags") >= 2, timeout=30,
               what="Orthanc's two refusal lines")

    # 2. Stored and routed, through a PACS that refuses at first: the worker logs failures and retries.
    pacs = make_pacs("PACS", mode="refuse")
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    worker = workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    send(_canary_study("CT CANARY"), hub_settings)
    wait_until(lambda: "fail" in worker.log.read_text().lower() or "retry" in worker.log.read_text().lower(),
               timeout=60, what="the worker's log of a refused send")
    pacs.set_mode("accept")
    wait_until(lambda: all_jobs_final(db, 1), timeout=90, what="the canary study delivered")
    assert pacs.instance_count == 1

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # every worker's logs so far (make test runs pytest-xdist), not this worker's alone
    logs = session_logs(base, [clean_orthanc.logfile, pg_base_dir / "postgres.log"])
    assert clean_orthanc.logfile in logs and worker.log in logs
    hits = phi_hits(logs, (CANARY_ID, f"CANARYNAME{TOKEN}", f"GIVEN{TOKEN}"))
    assert hits == [], "patient data in logs:\n" + "\n".join(hits[:20])
    # The refusals are still logged, with the value replaced (ops/logredact.py).
    refusals = [line for line in clean_orthanc.log_text()[log_before:].splitlines() if "required tags" in line]
    assert len(refusals) >= 2 and all("PatientID=<redacted>" in line for line in refusals), refusals


@pytest.mark.parametrize(("line", "expected"), [
    ("Store has failed because required tags (StudyInstanceUID) are missing for the following instance: "
     "PatientID=SYN12345678, SeriesInstanceUID=1.2.3, SOPInstanceUID=1.2.4",
     "Store has failed because required tags (StudyInstanceUID) are missing for the following instance: "
     "PatientID=<redacted>, SeriesInstanceUID=1.2.3, SOPInstanceUID=1.2.4"),
    ("PatientName=DOE^JOHN Q, PatientBirthDate=19700101, x=1", "PatientName=<redacted>, PatientBirthDate=<redacted>, x=1"),
    ('{"PatientName" : "MÜLLER^JÖRG", "Modality": "CR"}', '{"PatientName" : "<redacted>", "Modality": "CR"}'),
    ("(0010,0020) PatientID: 12345", "(0010,0020) PatientID: <redacted>"),
    ("0010,1000 = OTHER-ID-7", "0010,1000 = <redacted>"),
    ("AccessionNumber=ACC42", "AccessionNumber=<redacted>"),
    ("IssuerOfPatientID=HOSPITAL, StudyInstanceUID=1.2", "IssuerOfPatientID=HOSPITAL, StudyInstanceUID=1.2"),
    ("Orthanc has started", "Orthanc has started"),
])
def test_the_log_filter_replaces_patient_values_only(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_the_log_filter_becomes_the_program(tmp_path: Path) -> None:
    """Same pid (what supervisord and `make stop` watch), same exit code, every line filtered."""
    script = 'echo "pid $$"; echo "PatientID=SECRET42, SOPInstanceUID=1.2" >&2; printf "no newline PatientName=X"; exit 7'
    proc = subprocess.Popen([sys.executable, "-I", str(LOG_FILTER), "--", "/bin/sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7
    text = out.decode()
    assert f"pid {proc.pid}\n" in text
    assert "PatientID=<redacted>, SOPInstanceUID=1.2\n" in text and text.endswith("no newline PatientName=<redacted>")
    assert "SECRET42" not in text
