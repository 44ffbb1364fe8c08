"""A hostile DICOM device on loopback: SCU calls with a chosen calling AET and source address.

Linux routes all of 127.0.0.0/8 to the loopback interface, so binding the client
socket to 127.0.0.2 makes Orthanc (listening on every interface) see a second host:
the "wrong address" of issue 15, without leaving the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

REGISTERED = "127.0.0.1"  # where the tests register every modality
ELSEWHERE = "127.0.0.2"  # another host on the network, as Orthanc sees it
SUCCESS_OR_PENDING = (0x0000, 0xFF00, 0xFF01)
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography (testkit.synthetic's CR studies)


@dataclass
class Answer:
    """What one C-FIND/C-GET/C-MOVE brought back: statuses, identifiers, instances stored to us."""

    established: bool
    statuses: list[int] = field(default_factory=list)
    identifiers: list[Dataset] = field(default_factory=list)
    received: int = 0

    @property
    def granted(self) -> bool:
        """True when Orthanc answered anything but a refusal (data, or a success status)."""
        return bool(self.identifiers or self.received or [s for s in self.statuses if s in SUCCESS_OR_PENDING])


def _query(study_uid: str = "") -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.PatientName = ""
    query.PatientID = ""
    return query


def retrieve(
    service: str, port: int, called_aet: str, calling_aet: str, source: str, *, move_to: str = "", study_uid: str = ""
) -> Answer:
    """One C-FIND ('find'), C-GET ('get') or C-MOVE ('move') from `calling_aet` at `source`."""
    context = {"find": StudyRootQueryRetrieveInformationModelFind, "get": StudyRootQueryRetrieveInformationModelGet,
               "move": StudyRootQueryRetrieveInformationModelMove}[service]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 15
    ae.add_requested_context(context)
    roles = []
    received = [0]
    handlers = []
    if service == "get":  # C-GET brings instances back on the same association: be their storage SCP
        for storage in (CR_STORAGE, SecondaryCaptureImageStorage):
            ae.add_requested_context(storage)
            roles.append(build_role(storage, scp_role=True))

        def on_store(_: evt.Event) -> int:
            received[0] += 1
            return 0x0000

        handlers.append((evt.EVT_C_STORE, on_store))
    assoc = ae.associate(REGISTERED, port, ae_title=called_aet, bind_address=(source, 0),
                         ext_neg=roles or None, evt_handlers=handlers or None)
    if not assoc.is_established:
        return Answer(False)
    try:
        query = _query(study_uid)
        if service == "find":
            responses = list(assoc.send_c_find(query, context))
        elif service == "move":
            responses = list(assoc.send_c_move(query, move_to, context))
        else:
            responses = list(assoc.send_c_get(query, context))
    finally:
        if assoc.is_established:
            assoc.release()
    return Answer(
        True,
        statuses=[int(status.Status) for status, _ in responses if "Status" in status],
        identifiers=[ident for _, ident in responses if ident is not None and service == "find"],
        received=received[0],
    )


def store_from(datasets: Sequence[Dataset], port: int, called_aet: str, calling_aet: str, source: str) -> list[int]:
    """C-STORE `datasets` as `calling_aet` from the address `source`; one status per dataset."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 15
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(REGISTERED, port, ae_title=called_aet, bind_address=(source, 0))
    assert assoc.is_established, f"no association from {source}"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()
