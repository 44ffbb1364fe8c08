"""Malformed DICOM sent to Orthanc's DICOM port: what the sender hears, and that nothing is lost.

What "a clear error" means for the hub (Orthanc 1.10.1, facts pinned here):
- Input Orthanc cannot store (no UIDs, a stream cut anywhere, a non-DICOM body,
  garbage bytes) is refused at the DICOM level: the sender gets a failure status, an
  aborted association or no answer (a cut stream: Orthanc waits for the rest until the
  sender gives up), and Orthanc logs one error line (without patient data: its
  output passes through ops/logredact.py).
  Nothing is stored, so the worker and the app have nothing to show; the Orthanc log
  (`./orthanc logs orthanc`) is the record.
- Input Orthanc does store (an unknown or broken character set, oversized tags, a
  NUL inside a value, well-formed pixel data shorter than the image) is an ordinary study for the hub: it is
  recorded, routed, delivered and shown, and what is delivered is what was stored.
In every case Orthanc keeps serving, and a good study sent right afterwards is delivered.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config

from core.queries import MASK
from testkit.dicom_peers import send_datasets
from testkit.harness.waiting import wait_until
from testkit.harness.worker_proc import ALL_TO_PACS, all_jobs_final, rules_file, send, study_row
from testkit.synthetic import make_study
from tests.integration.app.conftest import assert_clean, frame_text, study_no, table_rows

pytestmark = pytest.mark.integration

LOCALHOST = "127.0.0.1"
PIXEL_BYTES = 2048  # testkit.synthetic: 32 x 32 x 16 bits


def _file_bytes(ds: Dataset, path: Path) -> bytes:
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def send_raw_file(path: Path, port: int, called_aet: str, *, timeout: float = 3) -> int | None:
    """C-STORE a file's dataset bytes exactly as they are on disk: the status, or None.

    pynetdicom's chunked mode streams the bytes after the file meta without parsing
    them, so a cut file is a cut stream at Orthanc. None means no answer: the
    association was aborted or our DIMSE timeout passed.
    """
    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title="BADSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate(LOCALHOST, port, ae_title=called_aet)
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(str(path))
        return int(status.Status) if "Status" in status else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()


def _orthanc_is_serving(orthanc, settings) -> Dataset:
    """Orthanc answers REST and stores a good instance right after the bad input."""
    assert orthanc.proc.poll() is None, "Orthanc died"
    assert orthanc.rest.get("/system")["DicomAet"] == orthanc.aet
    good = make_study(1, 1, "XR GOOD AFTER BAD")
    send(good, settings)
    return good[0]


# --- refused: the sender hears it, nothing is stored --------------------------------


def _missing(tag: str):  # noqa: ANN202 - a case builder
    def build(tmp: Path) -> tuple[Path, str]:
        ds = make_study(1, 1, "XR NO UID")[0]
        delattr(ds, tag)
        path = tmp / "missing.dcm"
        _file_bytes(ds, path)
        return path, str(ds.PatientID)
    return build


def _cut(n: int):  # noqa: ANN202 - a case builder
    """The last `n` of 3164 bytes cut off: the stream ends inside an element's value."""
    def build(tmp: Path) -> tuple[Path, str]:
        ds = make_study(1, 1, "XR CUT")[0]
        raw = _file_bytes(ds, tmp / "whole.dcm")
        path = tmp / "cut.dcm"
        path.write_bytes(raw[:-n])
        return path, str(ds.PatientID)
    return build


def _png_body(tmp: Path) -> tuple[Path, str]:
    """A valid DICOM file meta header followed by a PNG instead of a dataset."""
    ds = make_study(1, 1, "XR PNG")[0]
    raw = _file_bytes(ds, tmp / "whole.dcm")
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")  # preamble, DICM, group length element
    path = tmp / "png.dcm"
    path.write_bytes(raw[:meta_end] + b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return path, str(ds.PatientID)


@pytest.mark.parametrize("build", [
    _missing("StudyInstanceUID"), _missing("SeriesInstanceUID"), _cut(1), _cut(100), _cut(2500), _png_body,
], ids=["no-study-uid", "no-series-uid", "cut-1-byte", "cut-in-pixels", "cut-in-header", "png-body"])
def test_unstorable_input_is_refused_to_the_sender_and_nothing_is_stored(
    build, clean_orthanc, hub_settings, tmp_path
) -> None:
    path, patient_id = build(tmp_path)
    log_before = len(clean_orthanc.log_text())

    status = send_raw_file(path, clean_orthanc.dicom_port, clean_orthanc.aet)

    assert status != 0, "Orthanc claimed to store an unstorable instance"
    assert clean_orthanc.rest.get("/instances") == []

    def error_lines() -> list[str]:  # Orthanc writes its line when it gives up on the association
        return [line for line in clean_orthanc.log_text()[log_before:].splitlines() if line.startswith("E")]

    wait_until(error_lines, timeout=30, what="Orthanc's error line")
    new_log = "\n".join(error_lines())
    good = _orthanc_is_serving(clean_orthanc, hub_settings)
    assert clean_orthanc.rest.lookup(str(good.SOPInstanceUID), level="Instance")
    if "missing" in path.name:
        # Pinned fact: Orthanc 1.10.1 refuses these before stack/lua/hub.lua runs, and its
        # error line would name the PatientID despite DeidentifyLogs; ops/logredact.py, which
        # Orthanc's output passes through, leaves the line but not the value.
        refusal = next(line for line in new_log.splitlines() if "required tags" in line)
        assert "PatientID=<redacted>" in refusal and patient_id not in new_log


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096,
    b"\x01\x00\xff\xff\xff\xff" + b"A" * 512,  # an A-ASSOCIATE-RQ claiming 4 GB
    bytes(range(256)) * 64,
], ids=["http", "png", "huge-pdu-length", "bytes"])
def test_garbage_on_the_dicom_port_is_dropped_and_orthanc_keeps_serving(
    junk: bytes, clean_orthanc, hub_settings
) -> None:
    log_before = len(clean_orthanc.log_text())
    with socket.create_connection((LOCALHOST, clean_orthanc.dicom_port), timeout=10) as sock:
        try:
            sock.sendall(junk)
            reply = sock.recv(1024)
        except ConnectionResetError:
            reply = b""
    assert reply == b"", "Orthanc answered garbage with data"  # it just drops the connection
    wait_until(lambda: "Receiving Association failed" in clean_orthanc.log_text()[log_before:],
               timeout=10, what="Orthanc's log line for the dropped association")
    assert clean_orthanc.rest.get("/instances") == []
    _orthanc_is_serving(clean_orthanc, hub_settings)


# --- accepted: recorded, routed, delivered and shown -------------------------------


def _odd_but_storable(tmp: Path, port: int, aet: str) -> dict[str, Dataset]:
    """Send each odd-but-storable instance; return them by case name."""
    charset = make_study(1, 1, "XR UNKNOWN CHARSET", accession="ACCCHARSET")[0]
    charset.SpecificCharacterSet = "ISO_IR 100"
    charset.PatientName = "MÜLLER^JÖRG"
    raw = _file_bytes(charset, tmp / "charset.dcm").replace(b"ISO_IR 100", b"ISO_IR 999")
    (tmp / "charset.dcm").write_bytes(raw)
    assert send_raw_file(tmp / "charset.dcm", port, aet, timeout=30) == 0

    utf8 = make_study(1, 1, "XR BROKEN UTF8", accession="ACCUTF8")[0]
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "BROKEN^ZZZZ"
    raw = _file_bytes(utf8, tmp / "utf8.dcm").replace(b"ZZZZ", b"\xff\xfe\xc3(")
    (tmp / "utf8.dcm").write_bytes(raw)
    assert send_raw_file(tmp / "utf8.dcm", port, aet, timeout=30) == 0

    huge = make_study(1, 1, "XR HUGE TAGS", accession="A" * 20000)[0]
    huge.StudyDescription = "<script>alert(1)</script>" + "D" * 200_000
    huge.PatientName = "P" * 100_000
    huge.add_new(0x00204000, "LT", "X" * 10_000_000)  # ImageComments, 10 MB
    huge.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # 4-byte lengths for every VR
    nul = make_study(1, 1, "XR NUL\x00HIDDEN", accession="ACC\x00NUL")[0]

    short = make_study(1, 1, "XR PIXELS SHORT", accession="ACCSHORT")[0]
    short.PixelData = short.PixelData[:-100]  # well-formed, but fewer bytes than Rows x Columns
    assert send_datasets([huge, nul, short], LOCALHOST, port, "BADSCU", aet) == [0, 0, 0]
    return {"charset": charset, "utf8": utf8, "huge": huge, "nul": nul, "short": short}


def test_storable_oddities_are_recorded_routed_delivered_and_shown(
    env, workers, db, app_env, open_page, pacs, clean_orthanc, hub_settings, tmp_path
) -> None:
    clean_orthanc.rest.put_modality("PACS", pacs.aet, pacs.port)
    worker = workers({**env, "ROUTING_RULES": rules_file(tmp_path, ALL_TO_PACS)})
    sent = _odd_but_storable(tmp_path, clean_orthanc.dicom_port, clean_orthanc.aet)
    good = _orthanc_is_serving(clean_orthanc, hub_settings)
    sent["good"] = good

    wait_until(lambda: all_jobs_final(db, len(sent)), timeout=90, what="every job final")
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.health()["status"] == "ok"
    # Nothing lost: every stored instance reached the PACS exactly once, and only those.
    assert sorted(pacs.receipts) == sorted(str(ds.SOPInstanceUID) for ds in sent.values())
    assert not pacs.duplicates()
    rows = {name: study_row(db, str(ds.StudyInstanceUID)) for name, ds in sent.items()}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(sent, "delivered")

    # Orthanc's reading of the odd values is what the hub records (and nothing crashes on it).
    assert rows["charset"]["patient_name"] == "MLLER^JRG"  # unknown charset: ASCII, specials dropped
    assert rows["utf8"]["patient_name"].startswith("BROKEN^")
    assert rows["huge"]["accession_number"] is None  # Orthanc keeps no main tag over 256 bytes
    assert rows["huge"]["description"] is None and rows["huge"]["patient_name"] is None
    assert (rows["nul"]["accession_number"], rows["nul"]["description"]) == ("ACC", "XR NUL")  # cut at NUL
    delivered = {p.name: dcmread(p) for p in pacs.out_dir.glob("*.dcm")}
    huge_copy = delivered[f"{sent['huge'].SOPInstanceUID}.dcm"]
    assert len(huge_copy.ImageComments) == 10_000_000 and len(huge_copy.AccessionNumber) == 20000
    # Pinned fact: Orthanc 1.10.1 stores pixel data shorter than the image without a word,
    # and the hub forwards exactly what was stored (it does not inspect pixels).
    assert len(delivered[f"{sent['short'].SOPInstanceUID}.dcm"].PixelData) == PIXEL_BYTES - 100

    # The Studies page lists them all, escaped text only, for an operator who sees names.
    at = open_page("studies", as_="operator")
    assert_clean(at)
    listed = {study_no(r): r for r in table_rows(at, "Study #")}
    assert {row["id"] for row in rows.values()} <= set(listed)
    assert listed[rows["charset"]["id"]]["Patient name"] == "MLLER^JRG"
    assert "MLLER^JRG" in frame_text(at) and MASK not in listed[rows["charset"]["id"]]["Patient name"]
