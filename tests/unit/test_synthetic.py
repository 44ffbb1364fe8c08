"""Synthetic DICOM datasets: valid, complete, and AI results in the same study."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from testkit.synthetic import derive_ai_series, make_study, write_datasets


def test_study_shape_and_uids() -> None:
    study = make_study(3, 4, "XR EXTREMITY BILATERAL BONE LENGTH", accession="ACC1", patient_id="SYN1")
    assert len(study) == 12
    assert len({str(d.StudyInstanceUID) for d in study}) == 1
    assert len({str(d.SeriesInstanceUID) for d in study}) == 3
    assert len({str(d.SOPInstanceUID) for d in study}) == 12
    assert {d.AccessionNumber for d in study} == {"ACC1"}
    assert {d.PatientID for d in study} == {"SYN1"}
    assert {d.StudyDescription for d in study} == {"XR EXTREMITY BILATERAL BONE LENGTH"}
    assert [d.SeriesNumber for d in study[::4]] == [1, 2, 3]
    assert [d.InstanceNumber for d in study[:4]] == [1, 2, 3, 4]


def test_given_study_uid_and_descriptions() -> None:
    study = make_study(2, 1, "CT HEAD", modality="CT", study_uid="1.2.3.4",
                       series_descriptions=["AXIAL", "CORONAL"])
    assert {str(d.StudyInstanceUID) for d in study} == {"1.2.3.4"}
    assert [d.SeriesDescription for d in study] == ["AXIAL", "CORONAL"]
    assert {d.Modality for d in study} == {"CT"}
    with pytest.raises(ValueError):
        make_study(2, 1, "X", series_descriptions=["ONE"])
    with pytest.raises(ValueError):
        make_study(0, 1, "X")


def test_file_meta_and_pixels() -> None:
    ds = make_study(1, 1, "XR CHEST")[0]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    pixels = ds.pixel_array
    assert pixels.shape == (32, 32) and str(pixels.dtype) == "uint16"
    assert "^" in str(ds.PatientName) and str(ds.PatientName).startswith("SYNTHETIC")


def test_ai_series_join_the_original_study() -> None:
    study = make_study(1, 2, "XR BONE LENGTH", accession="ACC9")
    qa = derive_ai_series(study, "QA VISUALIZATION", "OT")
    sr = derive_ai_series(study, "AI REPORT", "SR")
    for derived in (qa, sr):
        assert len(derived) == 1
        ds = derived[0]
        assert ds.StudyInstanceUID == study[0].StudyInstanceUID
        assert ds.AccessionNumber == "ACC9" and ds.PatientID == study[0].PatientID
        assert ds.SeriesInstanceUID not in {d.SeriesInstanceUID for d in study}
        assert ds.SOPInstanceUID not in {d.SOPInstanceUID for d in study}
        assert ds.SeriesNumber > study[0].SeriesNumber
    assert qa[0].SOPClassUID == SecondaryCaptureImageStorage and qa[0].Modality == "OT"
    assert qa[0].SeriesDescription == "QA VISUALIZATION"
    assert qa[0].pixel_array.shape == (32, 32, 3)
    assert sr[0].SOPClassUID == BasicTextSRStorage and sr[0].Modality == "SR"
    assert "PixelData" not in sr[0]
    assert sr[0].ContentSequence[0].ValueType == "TEXT"
    assert qa[0].SeriesInstanceUID != sr[0].SeriesInstanceUID


def test_files_round_trip(tmp_path: Path) -> None:
    study = make_study(1, 2, "XR CHEST")
    study += derive_ai_series(study, "AI REPORT", "SR")
    paths = write_datasets(study, tmp_path)
    assert [p.name for p in paths] == [f"{d.SOPInstanceUID}.dcm" for d in study]
    for path, original in zip(paths, study, strict=True):
        read = pydicom.dcmread(path)
        assert read.preamble is not None
        assert read.SOPInstanceUID == original.SOPInstanceUID
        assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
