"""Several modalities sending at once, and the ledger that checks what reached each peer.

Senders behave like real modalities: a study that Orthanc did not accept in full
(association refused or aborted, a non-success status) is sent again after a pause,
until it is accepted or the sender's deadline passes. `accepted` then says exactly
which studies Orthanc took, so "nothing lost" is judged against that, never against
what was merely attempted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from testkit.dicom_peers import STATUS_SUCCESS, AssociationFailed, StorageSCP, send_datasets
from testkit.harness.stack import OrthancRest


@dataclass
class SendReport:
    accepted: set[str] = field(default_factory=set)  # StudyInstanceUIDs Orthanc took in full
    given_up: set[str] = field(default_factory=set)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)


def send_until_accepted(
    datasets: Sequence[Dataset], host: str, port: int, calling_aet: str, called_aet: str,
    *, report: SendReport, deadline: float, pause_s: float = 0.5,
) -> None:
    """Send one study until every instance is accepted (or `deadline`, a monotonic time)."""
    study_uid = str(datasets[0].StudyInstanceUID)
    while True:
        try:
            statuses = send_datasets(datasets, host, port, calling_aet, called_aet, timeout=15)
            if statuses and all(s == STATUS_SUCCESS for s in statuses):
                with report._lock:
                    report.accepted.add(study_uid)
                return
        except (AssociationFailed, OSError, RuntimeError):
            pass
        if time.monotonic() + pause_s > deadline:
            with report._lock:
                report.given_up.add(study_uid)
            return
        with report._lock:
            report.retries += 1
        time.sleep(pause_s)


def send_concurrently(
    studies: Sequence[Sequence[Dataset]], senders: int, host: str, port: int, called_aet: str,
    *, timeout_s: float = 240,
) -> SendReport:
    """Send `studies` from `senders` modalities (AETs MODALITY1..N) at once, round-robin."""
    report = SendReport()
    deadline = time.monotonic() + timeout_s

    def run(index: int) -> None:
        for study in studies[index::senders]:
            send_until_accepted(study, host, port, f"MODALITY{index + 1}", called_aet,
                                report=report, deadline=deadline)

    with ThreadPoolExecutor(senders, thread_name_prefix="modality") as pool:
        for future in [pool.submit(run, i) for i in range(senders)]:
            future.result()
    return report


@dataclass(frozen=True)
class PeerCheck:
    """What one peer should have received against what it did."""

    aet: str
    expected: int
    missing: set[str]
    unexpected: set[str]
    duplicates: dict[str, int]

    @property
    def extra_receipts(self) -> int:
        return sum(n - 1 for n in self.duplicates.values())


def check_peer(scp: StorageSCP, expected: set[str]) -> PeerCheck:
    got = Counter(scp.receipts)
    return PeerCheck(
        aet=scp.aet, expected=len(expected), missing=expected - set(got), unexpected=set(got) - expected,
        duplicates={uid: n for uid, n in got.items() if n > 1},
    )


@dataclass(frozen=True)
class OrthancContents:
    """Every instance Orthanc holds: SOPInstanceUID -> StudyInstanceUID."""

    study_of: dict[str, str]

    @classmethod
    def read(cls, rest: OrthancRest) -> OrthancContents:
        study_uid = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in rest.get("/studies", expand="")}
        series_study = {s["ID"]: study_uid[s["ParentStudy"]] for s in rest.get("/series", expand="")}
        return cls({i["MainDicomTags"]["SOPInstanceUID"]: series_study[i["ParentSeries"]]
                    for i in rest.get("/instances", expand="")})

    @property
    def studies(self) -> set[str]:
        return set(self.study_of.values())
