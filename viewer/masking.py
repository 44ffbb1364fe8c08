"""Patient identifiers in what the gateway sends a viewer-role session: masked, or not sent.

The app's pages and the API show patient names and ids from the operator role up and
mask them for the viewer role (core.queries.MASK); the gateway does the same to the
DICOM data OHIF reads (issue 17's decision), so a viewer sees the images and the study,
not who the patient is:

- DICOM JSON (QIDO-RS answers, WADO-RS metadata): each attribute of PATIENT_TAGS, at any
  depth, loses its value; a text value becomes the mask, a date, time, age, sequence or
  binary value is left empty (the mask is no valid date, and an empty value is DICOM's
  "unknown").
- Whole instances (WADO-RS retrieve of a study, series or instance; WADO-URI as
  application/dicom) would carry the tags unmasked: refused, 403. OHIF renders from
  metadata and frames, so it needs none of them; WADO-URI as an image is allowed.
- Bulk data of a PATIENT_TAGS attribute (Orthanc serves any tag's value under /bulk/):
  refused, 403. Pixel data and the other bulk values are not patient identifiers.
- A search by a patient identifier would reveal whose study it is: refused, 403, except
  a search for the mask itself (OHIF looks for "the patient's other studies" with the
  PatientID it was shown), which finds nothing, without asking Orthanc.

Rendered images, thumbnails and frames are pixels only and pass as they are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from core.auth import role_at_least
from core.queries import MASK
from core.states import Role
from viewer.dicomweb import DICOMWEB_ROOT, Read, Refusal

# The patient module's identifying attributes (DICOM PS3.6): tag -> keyword. Not masked: sex,
# age, size and weight, which reading an image needs (a PET's SUV uses the weight).
PATIENT_TAGS: dict[str, str] = {
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100030": "PatientBirthDate",
    "00100032": "PatientBirthTime",
    "00101000": "OtherPatientIDs",
    "00101001": "OtherPatientNames",
    "00101002": "OtherPatientIDsSequence",
    "00101005": "PatientBirthName",
    "00101040": "PatientAddress",
    "00101060": "PatientMotherBirthName",
    "00101090": "MedicalRecordLocator",
    "00101100": "ReferencedPatientPhotoSequence",
    "00102154": "PatientTelephoneNumbers",
    "00102155": "PatientTelecomInformation",
}
# Value representations whose value the mask can stand in for (text); any other is emptied.
TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
REFUSED = ("your role (viewer) does not see patient identifiers: {what} would carry them unmasked, so the "
           "viewer gateway does not send {it}; images, frames and the masked metadata are available")
_SEARCH_KEYS = {key.upper(): key for key in (*PATIENT_TAGS, *PATIENT_TAGS.values())}


def sees_patient_data(role: str | None) -> bool:
    """As the app and the API: patient names and ids from the operator role up."""
    return role_at_least(role, Role.OPERATOR)


def refusal(read: Read, query: str) -> Refusal | None:
    """Why a viewer-role session may not have this read, or None when it may (masked if JSON)."""
    if read.content == "dicom":
        return Refusal(403, REFUSED.format(what="whole DICOM instances", it="them"))
    if read.content == "wado":
        types = parse_qs(query, keep_blank_values=True).get("contentType", [])
        if len(types) != 1 or types[0] not in ("image/jpeg", "image/png", "image/gif"):
            return Refusal(403, REFUSED.format(what="WADO-URI without contentType=image/jpeg (or image/png)",
                                               it="it"))
    if read.content == "bulk":
        tags = read.path.rsplit("/bulk/", 1)[1].split("/")[::2]
        if any(tag.upper() in PATIENT_TAGS for tag in tags):
            return Refusal(403, REFUSED.format(what="this bulk data", it="it"))
    return None


def empty_search(read: Read, query: str) -> bool | Refusal:
    """For a QIDO search: True when it looks only for the mask (nothing can match), a Refusal when
    it filters by a patient identifier, False when it may go to Orthanc."""
    if not read.path.startswith(DICOMWEB_ROOT) or read.content != "json" or read.path.endswith("/metadata"):
        return False
    named = [values for key, values in parse_qs(query, keep_blank_values=True).items()
             if key.upper() in _SEARCH_KEYS]
    if not named:
        return False
    if all(value in ("", MASK) for values in named for value in values):
        return any(value == MASK for values in named for value in values)
    return Refusal(403, "your role (viewer) does not see patient identifiers, so it cannot search by them")


def mask_dataset(dataset: dict[str, Any]) -> None:
    """Mask PATIENT_TAGS in one DICOM JSON dataset, in place, sequences included."""
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            continue
        if tag.upper() in PATIENT_TAGS:
            vr = element.get("vr")
            had_value = any(key in element for key in ("Value", "BulkDataURI", "InlineBinary"))
            for key in ("Value", "BulkDataURI", "InlineBinary"):
                element.pop(key, None)
            if had_value and vr in TEXT_VRS:
                element["Value"] = [{"Alphabetic": MASK} if vr == "PN" else MASK]
            continue
        for item in element.get("Value") or ():
            if isinstance(item, dict) and element.get("vr") == "SQ":
                mask_dataset(item)


def mask_dicom_json(document: Any) -> Any:
    """A QIDO-RS or metadata answer (a list of datasets, or one) with PATIENT_TAGS masked."""
    for dataset in document if isinstance(document, list) else [document]:
        if isinstance(dataset, dict):
            mask_dataset(dataset)
    return document
