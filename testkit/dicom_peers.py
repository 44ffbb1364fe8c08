"""Real DICOM peers on loopback, built on pynetdicom: a sender, a PACS and an AI node.

Used by the tests, the benchmarks and the demo, so that every DICOM exchange goes
over a real TCP association with Orthanc.

pynetdicom never sets TCP_NODELAY. With Nagle's algorithm on, each small PDU waits
for the peer's delayed ACK and loopback transfers crawl at about 10 instances/s. An
`EVT_CONN_OPEN` handler sets it on every association socket, on both sides: the
event fires after `connect()` for a requestor and before the association's reactor
starts for an acceptor, so no PDU is ever sent with Nagle on.

DICOM TLS: a StorageSCP given an `ssl_context` accepts TLS associations only; `send_datasets`
and `echo` given `tls=(context, server_hostname)` associate over TLS (pynetdicom's
tls_args). tests/security/test_tls.py uses both against Orthanc.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import (
    StoragePresentationContexts,
    VerificationPresentationContexts,
)
from pynetdicom.transport import ThreadedAssociationServer

from testkit.synthetic import derive_ai_series

LOG = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
_handed_out: set[int] = set()


def _port_share() -> tuple[int, int]:
    """(index, count): under pytest-xdist each worker process takes only ports from its own
    blocks of 64 (block number modulo the worker count is its index), so two workers never
    hand out the same port. (Blocks, not remainders: Linux gives bind() even ports.)"""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if count > 1 and worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % count, count
    return 0, 1


def free_port() -> int:
    """A loopback port nobody listens on now and that this process has not handed out before.

    The kernel may give the same ephemeral port twice once it is released, so ports
    already handed out in this run are skipped (two peers must never collide).
    """
    index, count = _port_share()
    for _ in range(100 * count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if (port >> 6) % count == index and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NO_RESPONSE = -1
MAX_CONTEXTS = 128


def _set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association socket."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLER: tuple[Any, Any] = (evt.EVT_CONN_OPEN, _set_nodelay)
# pynetdicom's tls_args: a client SSLContext and the server's host name to check.
TlsArgs = tuple[ssl.SSLContext, str]


class AssociationFailed(ConnectionError):
    """The peer refused, aborted or never answered the association request."""


def send_datasets(
    datasets: Sequence[Dataset],
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    *,
    timeout: float = 30,
    tls: TlsArgs | None = None,
) -> list[int]:
    """C-STORE `datasets` over one association; return one DIMSE status per dataset.

    A dataset that got no response (the association dropped) has status -1. Raises
    AssociationFailed when no association could be established. `tls`: over DICOM TLS.
    """
    if not datasets:
        return []
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    syntaxes: dict[str, list[str]] = {}
    for sop_class, syntax in pairs:
        syntaxes.setdefault(sop_class, [])
        if syntax not in syntaxes[sop_class]:
            syntaxes[sop_class].append(syntax)
    if len(syntaxes) > MAX_CONTEXTS:
        raise ValueError(f"more than {MAX_CONTEXTS} SOP classes in one association")
    for sop_class, wanted in syntaxes.items():
        for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if fallback not in wanted:
                wanted.append(fallback)
        ae.add_requested_context(sop_class, wanted)
    assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=[NODELAY_HANDLER], tls_args=tls)
    if not assoc.is_established:
        raise AssociationFailed(f"no association with {called_aet}@{host}:{port}")
    statuses: list[int] = []
    try:
        for ds in datasets:
            if not assoc.is_established:
                statuses.append(STATUS_NO_RESPONSE)
                continue
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else STATUS_NO_RESPONSE)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


@dataclass
class Receipt:
    """One received C-STORE, as the tests want to inspect it."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    calling_aet: str
    received_at: float


class StorageSCP:
    """A storage SCP acting as a PACS destination, on 127.0.0.1 in a background thread.

    Files are written to `out_dir/<SOPInstanceUID>.dcm`; `receipts` counts every
    C-STORE per SOPInstanceUID, so a test can assert exactly-once delivery even though
    a duplicate overwrites the file. `set_mode('refuse')` answers 0xA700 (out of
    resources) without storing; `stop()` closes the port to simulate a PACS that is
    down, and `start()` brings it back on the same port.
    """

    def __init__(
        self, aet: str, port: int, out_dir: Path | None = None, mode: str = "accept", host: str = LOOPBACK,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.aet = aet
        self.port = port
        self.host = host
        self.ssl_context = ssl_context  # a server context: DICOM TLS only
        self.out_dir = Path(out_dir) if out_dir else None
        self._mode = "accept"
        self.set_mode(mode)
        self._lock = threading.Lock()
        self.receipts: Counter[str] = Counter()
        self.history: list[Receipt] = []
        self.refused = 0
        self._server: ThreadedAssociationServer | None = None
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # -- control ---------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in ("accept", "refuse"):
            raise ValueError("mode is 'accept' or 'refuse'")
        self._mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        if self._server is not None:
            return self
        ae = AE(ae_title=self.aet)
        ae.network_timeout = 30
        ae.maximum_associations = 16
        ae.supported_contexts = StoragePresentationContexts + VerificationPresentationContexts
        self._server = ae.start_server(
            (self.host, self.port), block=False, ssl_context=self.ssl_context,
            evt_handlers=[NODELAY_HANDLER, (evt.EVT_C_STORE, self._on_c_store)],
        )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------

    @property
    def instance_count(self) -> int:
        """Distinct SOPInstanceUIDs received."""
        with self._lock:
            return len(self.receipts)

    @property
    def total_receipts(self) -> int:
        with self._lock:
            return sum(self.receipts.values())

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {uid: n for uid, n in self.receipts.items() if n > 1}

    def received_from(self, study_uid: str) -> list[Receipt]:
        with self._lock:
            return [r for r in self.history if r.study_instance_uid == study_uid]

    def wait_for(self, count: int, timeout: float = 30) -> bool:
        """Wait until at least `count` distinct instances arrived; True when they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.instance_count >= count:
                return True
            time.sleep(0.05)
        return self.instance_count >= count

    def reset(self) -> None:
        with self._lock:
            self.receipts.clear()
            self.history.clear()
            self.refused = 0

    # -- handler ---------------------------------------------------------------

    def _on_c_store(self, event: Event) -> int:
        if self._mode == "refuse":
            with self._lock:
                self.refused += 1
            return STATUS_OUT_OF_RESOURCES
        request = event.request
        if not isinstance(request, C_STORE):  # EVT_C_STORE always carries a C-STORE request
            raise TypeError(f"expected a C-STORE request, got {type(request).__name__}")
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        sop_uid = str(request.AffectedSOPInstanceUID)
        if self.out_dir:
            ds.save_as(self.out_dir / f"{sop_uid}.dcm", enforce_file_format=True)
        receipt = Receipt(
            sop_instance_uid=sop_uid,
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            calling_aet=str(event.assoc.requestor.ae_title),
            received_at=time.time(),
        )
        with self._lock:
            self.receipts[sop_uid] += 1
            self.history.append(receipt)
        self._received(ds, receipt)
        return STATUS_SUCCESS

    def _received(self, ds: Dataset, receipt: Receipt) -> None:
        """Hook for subclasses, called after a successful store."""


@dataclass
class _PendingStudy:
    datasets: list[Dataset] = field(default_factory=list)
    last_received: float = 0.0
    received: int = 0  # instances in this round


class AINode(StorageSCP):
    """An AI orchestrator like mercure: receives studies, returns results into them.

    When a study has had no new instance for `quiet_s` seconds (mercure's "study
    complete" timer) plus `delay_s` or `delay_for(uid)` (the inference time), it C-STOREs one
    derived series per entry of `results` back to Orthanc, in the same
    StudyInstanceUID and from its own calling AET, which is how the worker recognises
    AI results. Instances arriving for a study after its results went out start a
    new round, as they would in mercure. Results Orthanc did not take (it was down,
    or refused some) are sent again, the same instances, every `retry_s` for up to
    `retry_for_s` seconds, as mercure's dispatcher retries.
    """

    def __init__(
        self,
        aet: str = "MERCURE",
        port: int = 11112,
        *,
        orthanc_host: str = LOOPBACK,
        orthanc_dicom_port: int,
        orthanc_aet: str,
        delay_s: float = 0.5,
        quiet_s: float = 1.0,
        results: Sequence[tuple[str, str]] = (("QA VISUALIZATION", "OT"), ("AI REPORT", "SR")),
        out_dir: Path | None = None,
        host: str = LOOPBACK,
        retry_s: float = 1.0,
        retry_for_s: float = 180.0,
        delay_for: Callable[[str], float] | None = None,
    ) -> None:
        super().__init__(aet, port, out_dir=out_dir, host=host)
        self.delay_for = delay_for  # per-study inference time (StudyInstanceUID -> s); delay_s otherwise
        # The node's own clock, per study, for checking the hub's AI round trip against it:
        # first and last instance received (first round), and when its results began to go out.
        self.first_received_at: dict[str, float] = {}
        self.last_received_at: dict[str, float] = {}
        self.results_sent_at: dict[str, float] = {}
        self.results_transfer_s: dict[str, float] = {}  # how long the first results' C-STOREs took
        self.retry_s = retry_s
        self.retry_for_s = retry_for_s
        self._retries: list[tuple[float, float, str, list[Dataset]]] = []  # (due, first try, uid, results)
        self.orthanc_host = orthanc_host
        self.orthanc_dicom_port = orthanc_dicom_port
        self.orthanc_aet = orthanc_aet
        self.delay_s = delay_s
        self.quiet_s = quiet_s
        self.results = list(results)
        self._pending: dict[str, _PendingStudy] = {}
        self.returned = 0  # instances sent back to Orthanc successfully
        self.returned_studies: list[str] = []
        self.rounds: list[tuple[str, int]] = []  # (StudyInstanceUID, instances received) per round taken up
        self.errors: list[str] = []
        self._returning = 0  # rounds taken off `_pending` whose results are not sent yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def received(self) -> int:
        return self.total_receipts

    def start(self) -> Self:
        super().start()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"AINode-{self.aet}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 + self.delay_s)
            self._thread = None

    @property
    def idle(self) -> bool:
        """Nothing received is still waiting for, or in, a round of results, and no retry is due."""
        with self._lock:
            return not self._pending and not self._retries and not self._returning

    def wait_returned(self, studies: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.returned_studies) >= studies:
                    return True
            time.sleep(0.05)
        return False

    def _received(self, ds: Dataset, receipt: Receipt) -> None:
        with self._lock:
            uid = receipt.study_instance_uid
            self.first_received_at.setdefault(uid, receipt.received_at)
            if uid not in self.results_sent_at:
                self.last_received_at[uid] = receipt.received_at
            pending = self._pending.setdefault(uid, _PendingStudy())
            if not pending.datasets:  # the patient and study modules are all we need
                pending.datasets.append(ds)
            pending.received += 1
            pending.last_received = time.monotonic()

    def _delay(self, study_uid: str) -> float:
        return self.delay_for(study_uid) if self.delay_for else self.delay_s

    def _due(self) -> list[tuple[str, list[Dataset]]]:
        """Studies quiet for `quiet_s` whose inference time has passed (studies run side by side)."""
        now = time.monotonic()
        with self._lock:
            ready = [uid for uid, p in self._pending.items() if now - p.last_received >= self.quiet_s + self._delay(uid)]
            self._returning += len(ready)
            taken = [(uid, self._pending.pop(uid)) for uid in ready]
            self.rounds.extend((uid, p.received) for uid, p in taken)
            return [(uid, p.datasets) for uid, p in taken]

    def _due_retries(self) -> list[tuple[float, str, list[Dataset]]]:
        now = time.monotonic()
        with self._lock:
            due = [r for r in self._retries if r[0] <= now]
            self._retries = [r for r in self._retries if r[0] > now]
            self._returning += len(due)
        return [(first, uid, results) for _, first, uid, results in due]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for study_uid, datasets in self._due():
                derived: list[Dataset] = []
                for description, modality in self.results:
                    derived.extend(derive_ai_series(datasets, description, modality))
                self._return_results(study_uid, derived, time.monotonic())
            for first_try, study_uid, derived in self._due_retries():
                self._return_results(study_uid, derived, first_try)
            self._stop.wait(0.05)

    def _return_results(self, study_uid: str, derived: list[Dataset], first_try: float) -> None:
        with self._lock:
            self.results_sent_at.setdefault(study_uid, time.time())
        try:
            statuses = send_datasets(
                derived, self.orthanc_host, self.orthanc_dicom_port, self.aet, self.orthanc_aet
            )
        except (AssociationFailed, OSError) as exc:
            statuses, problem = [], str(exc)
        else:
            problem = f"statuses {[hex(s) for s in statuses]}"
        ok = sum(1 for s in statuses if s == STATUS_SUCCESS)
        with self._lock:
            self.results_transfer_s.setdefault(study_uid, time.time() - self.results_sent_at[study_uid])
            self._returning -= 1
            self.returned += ok
            if ok == len(derived):
                self.returned_studies.append(study_uid)
            elif time.monotonic() - first_try < self.retry_for_s:
                self._retries.append((time.monotonic() + self.retry_s, first_try, study_uid, derived))
            else:
                self.errors.append(f"{study_uid}: {problem}")


def echo(host: str, port: int, calling_aet: str, called_aet: str, timeout: float = 10,
         tls: TlsArgs | None = None) -> int:
    """C-ECHO (`tls`: over DICOM TLS); return the status, or -1 when no association could be made."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=[NODELAY_HANDLER], tls_args=tls)
    if not assoc.is_established:
        return STATUS_NO_RESPONSE
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else STATUS_NO_RESPONSE
    finally:
        assoc.release()


def datasets_by_study(datasets: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {}
    for ds in datasets:
        out.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return out
