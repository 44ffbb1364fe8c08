"""Synthetic DICOM studies for tests, benchmarks and the demo: no real patient data.

Datasets are small (32x32 pixels) but complete enough for Orthanc, DCMTK and viewers:
Explicit VR Little Endian file meta, patient/study/series/instance modules, and, for
AI results, the kinds of series mercure sends back (a secondary-capture
visualisation and a Basic Text SR report) in the *same* StudyInstanceUID.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

ROWS = COLUMNS = 32
AI_MANUFACTURER = "SYNTHETIC AI"

SOP_CLASSES: dict[str, UID] = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "OT": SecondaryCaptureImageStorage,
    "SR": BasicTextSRStorage,
}


def _sop_class(modality: str) -> UID:
    # Any other modality is stored as secondary capture, which accepts all of them.
    return SOP_CLASSES.get(modality.upper(), SecondaryCaptureImageStorage)


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HUB_SYNTH"
    return meta


def _new_dataset(sop_class: UID) -> Dataset:
    sop_instance = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _copy_study_level(ds: Dataset, source: Dataset) -> None:
    """Copy the patient and study modules (identical across a study's series)."""
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
        "StudyDescription", "ReferringPhysicianName", "InstitutionName",
    ):
        element = source.data_element(keyword) if keyword in source else None
        if element is not None:
            setattr(ds, keyword, element.value)


def _set_grey_pixels(ds: Dataset, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()


def _set_rgb_pixels(ds: Dataset, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(ROWS, COLUMNS, 3), dtype=np.uint8)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _synthetic_id(prefix: str, rng: random.Random) -> str:
    return f"{prefix}{rng.randrange(10**7, 10**8)}"


def make_study(
    n_series: int,
    n_instances: int,
    description: str,
    modality: str = "CR",
    accession: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    *,
    patient_name: str = "SYNTHETIC^PATIENT",
    study_datetime: datetime | None = None,
    series_descriptions: Sequence[str] | None = None,
    institution: str = "SYNTHETIC HOSPITAL",
) -> list[Dataset]:
    """A study of `n_series` series with `n_instances` instances each, in series order."""
    if n_series < 1 or n_instances < 1:
        raise ValueError("a study needs at least one series and one instance")
    if series_descriptions is not None and len(series_descriptions) != n_series:
        raise ValueError("give one series description per series")
    rng = random.Random()
    when = study_datetime or datetime.now()
    study_uid = study_uid or generate_uid()
    accession = accession or _synthetic_id("ACC", rng)
    patient_id = patient_id or _synthetic_id("SYN", rng)
    sop_class = _sop_class(modality)
    datasets: list[Dataset] = []
    for s in range(n_series):
        series_uid = generate_uid()
        series_desc = series_descriptions[s] if series_descriptions else f"{description} {s + 1}"
        for i in range(n_instances):
            ds = _new_dataset(sop_class)
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = when.strftime("%Y%m%d")
            ds.StudyTime = when.strftime("%H%M%S")
            ds.StudyID = "1"
            ds.AccessionNumber = accession
            ds.StudyDescription = description
            ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
            ds.InstitutionName = institution
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s + 1
            ds.SeriesDescription = series_desc
            ds.SeriesDate = ds.StudyDate
            ds.SeriesTime = ds.StudyTime
            ds.Modality = modality
            ds.Manufacturer = "SYNTHETIC MODALITY"
            ds.BodyPartExamined = "LOWER LIMB" if "BONE LENGTH" in description.upper() else "CHEST"
            ds.InstanceNumber = i + 1
            ds.ContentDate = ds.StudyDate
            ds.ContentTime = ds.StudyTime
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            if sop_class == SecondaryCaptureImageStorage:
                ds.ConversionType = "WSD"
            _set_grey_pixels(ds, seed=s * 10_000 + i)
            datasets.append(ds)
    return datasets


def _sr_dataset(text: str) -> Dataset:
    ds = _new_dataset(BasicTextSRStorage)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    finding.ConceptNameCodeSequence = DicomSequence([name])
    finding.TextValue = text
    ds.ContentSequence = DicomSequence([finding])
    ds.ContentTemplateSequence = DicomSequence()
    return ds


def derive_ai_series(
    original_datasets: Sequence[Dataset],
    description: str,
    modality: str,
    *,
    n_instances: int = 1,
    series_number: int | None = None,
    manufacturer: str = AI_MANUFACTURER,
) -> list[Dataset]:
    """A new series in the originals' study, as an AI node returns it.

    New SeriesInstanceUID and SOPInstanceUIDs, same patient and study modules
    (StudyInstanceUID and AccessionNumber are what the worker links on). `modality`
    'SR' gives a Basic Text SR report without pixels; anything else a secondary
    capture RGB image (such as mercure's 'QA VISUALIZATION').
    """
    if not original_datasets:
        raise ValueError("derive_ai_series needs at least one original dataset")
    source = original_datasets[0]
    if series_number is None:
        series_number = max(int(d.get("SeriesNumber", 0) or 0) for d in original_datasets) + 100
    series_uid = generate_uid()
    now = datetime.now()
    out: list[Dataset] = []
    for i in range(n_instances):
        if modality.upper() == "SR":
            ds = _sr_dataset(f"Synthetic AI result {i + 1} for {description}.")
        else:
            ds = _new_dataset(SecondaryCaptureImageStorage)
            ds.ConversionType = "WSD"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            _set_rgb_pixels(ds, seed=i)
        _copy_study_level(ds, source)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Modality = modality
        ds.Manufacturer = manufacturer
        ds.InstanceNumber = i + 1
        out.append(ds)
    return out


def write_datasets(datasets: Iterable[Dataset], directory: Path) -> list[Path]:
    """Write each dataset as a DICOM Part 10 file named by its SOPInstanceUID."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_uids(datasets: Iterable[Dataset]) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in datasets}
