"""A small typed client for the parts of Orthanc's REST API the hub uses.

Shared by the worker (changes, tags, metadata, store jobs), the app and the CLI
(modalities, echo, health). Errors become `OrthancError` with Orthanc's own status
and details, so callers can record them verbatim.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx

from core.dicom_names import Modality
from core.settings import Settings


class OrthancError(RuntimeError):
    """Orthanc answered with an error, or could not be reached (status None)."""

    def __init__(self, message: str, *, status: int | None = None, orthanc_status: int | None = None):
        super().__init__(message)
        self.status = status
        self.orthanc_status = orthanc_status


class OrthancUnavailable(OrthancError):
    """Orthanc could not be reached at all (connection refused, timeout).

    `refused`: the connection itself failed, so the request never reached Orthanc and
    may safely go to another node (OrthancNodes), even a POST that starts a store.
    """

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class OrthancJobState(StrEnum):
    """The `State` of an Orthanc job (GET /jobs/{id}); Success and Failure are final."""

    PENDING = "Pending"
    RUNNING = "Running"
    RETRY = "Retry"  # a step asked to be retried later; Orthanc runs it again by itself
    PAUSED = "Paused"  # POST /jobs/{id}/pause; runs again only after POST /jobs/{id}/resume
    SUCCESS = "Success"
    FAILURE = "Failure"


# Orthanc's ErrorCode of a job stopped by POST /jobs/{id}/cancel (ErrorCode_CanceledJob).
CANCELED_JOB_ERROR = 37


def parse_orthanc_time(value: str | None) -> datetime | None:
    """Parse Orthanc's `20261128T032100` or `20261128T032100.123456` timestamps as UTC.

    Orthanc 1.10 writes change dates, ReceptionDate metadata and job times in UTC
    (pinned by tests/integration/test_harness.py under a non-UTC TZ). Change dates and
    ReceptionDate have whole seconds only, so job times are truncated to whole seconds
    too: with mixed precision an AI result received in the same second as the AI send
    completed would look earlier than the send (a negative round trip).
    """
    if not value:
        return None
    fmt = "%Y%m%dT%H%M%S.%f" if "." in value else "%Y%m%dT%H%M%S"
    return datetime.strptime(value, fmt).replace(tzinfo=UTC, microsecond=0)


@dataclass(frozen=True)
class StoreProgress:
    """A DicomModalityStore job's progress as Orthanc reports it.

    Orthanc 1.10 gives the job's `Progress` as a whole percentage of its instances done and
    the batch size as `Content.InstancesCount` (`FailedInstancesCount`: refused ones, in
    a permissive store); it does not report the position itself, so `sent` is derived:
    floor(Progress x InstancesCount / 100), which never overstates what went out.
    """

    state: str
    percent: int
    total: int | None
    failed: int

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> StoreProgress:
        content = job.get("Content") or {}
        total = content.get("InstancesCount")
        return cls(state=str(job.get("State", "")), percent=int(job.get("Progress") or 0),
                   total=int(total) if total is not None else None,
                   failed=int(content.get("FailedInstancesCount") or 0))

    @property
    def sent(self) -> int | None:
        if self.total is None:
            return None
        return self.total if self.state == OrthancJobState.SUCCESS else self.total * self.percent // 100

    def label(self) -> str:
        """'7 of 20 instances (35 %)', as the Queue and the study page show it."""
        if self.total is None:
            return f"{self.percent} % ({self.state})"
        failed = f", {self.failed} refused" if self.failed else ""
        return f"{self.sent} of {self.total} instances ({self.percent} %{failed})"


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    latency_ms: float
    error: str | None


class OrthancClient:
    """Synchronous Orthanc REST client with authentication and short timeouts.

    With HTTPS on (`.env`), `from_settings` uses https and verifies Orthanc's certificate
    against the CA of TLS_CA_FILE (or the hub's generated one), never the system's.
    """

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0,
                 verify: ssl.SSLContext | bool = True):
        self._http = httpx.Client(base_url=base_url, auth=(username, password), timeout=timeout, verify=verify)

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 30.0) -> OrthancClient:
        """A client of node 1, or of every node when ORTHANC_NODES > 1 (OrthancNodes)."""
        auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
        if settings.orthanc_nodes > 1:
            return OrthancNodes([cls(url, *auth, timeout, verify=orthanc_verify(settings))
                                 for url in settings.orthanc_urls])
        return cls(settings.orthanc_url, *auth, timeout, verify=orthanc_verify(settings))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise OrthancUnavailable(f"Orthanc is unreachable: {type(exc).__name__}: {exc}",
                                     refused=isinstance(exc, httpx.ConnectError)) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    # --- system ------------------------------------------------------------------

    def system(self) -> dict[str, Any]:
        return self.get("/system")

    def statistics(self) -> dict[str, Any]:
        return self.get("/statistics")

    # --- changes and resources ---------------------------------------------------

    def changes(self, since: int, limit: int) -> dict[str, Any]:
        return self.get("/changes", since=since, limit=limit)

    def last_change(self) -> int:
        return int(self.get("/changes", last="")["Last"])

    def series(self, orthanc_id: str) -> dict[str, Any]:
        return self.get(f"/series/{orthanc_id}")

    def study(self, orthanc_id: str) -> dict[str, Any]:
        return self.get(f"/studies/{orthanc_id}")

    def stable_on_every_node(self, study_id: str) -> bool:
        """Whether no node still counts the study unstable, asked after its StableStudy change.

        With one Orthanc that change is the answer, so nothing is read; OrthancNodes asks
        each node, whose stability timers are its own.
        """
        return True

    def instance_metadata(self, orthanc_id: str) -> dict[str, str]:
        return self.get(f"/instances/{orthanc_id}/metadata", expand="")

    def lookup_study(self, study_uid: str) -> str | None:
        """Orthanc's id for a StudyInstanceUID, or None."""
        matches = self.request("POST", "/tools/lookup", content=study_uid)
        for match in matches or []:
            if match.get("Type") == "Study":
                return match["ID"]
        return None

    # --- modalities ----------------------------------------------------------------

    def modalities(self) -> dict[str, dict[str, Any]]:
        return self.get("/modalities", expand="")

    def put_modality(self, modality: Modality) -> None:
        self.request("PUT", f"/modalities/{modality.name}", json=modality.orthanc_body())

    def delete_modality(self, name: str) -> None:
        self.request("DELETE", f"/modalities/{name}")

    def echo(self, name: str, timeout: int = 5, *, raise_unreachable: bool = False) -> EchoResult:
        """C-ECHO through Orthanc; returns the error text of a failed echo.

        With `raise_unreachable`, Orthanc itself being unreachable raises
        OrthancUnavailable instead: the worker must not mistake it for a peer's outage.
        """
        start = time.perf_counter()
        try:
            self.request("POST", f"/modalities/{name}/echo", json={"Timeout": timeout})
        except OrthancUnavailable as exc:
            if raise_unreachable:
                raise
            return EchoResult(False, (time.perf_counter() - start) * 1000, str(exc))
        except OrthancError as exc:
            return EchoResult(False, (time.perf_counter() - start) * 1000, str(exc))
        return EchoResult(True, (time.perf_counter() - start) * 1000, None)

    # --- store jobs ----------------------------------------------------------------

    def store_async(self, modality: str, resources: list[str], timeout: int = 60) -> str:
        """Start an asynchronous C-STORE job and return Orthanc's job id.

        Not `Permissive`: a refused instance must fail the job, not vanish.
        """
        body = {"Resources": resources, "Asynchronous": True, "Synchronous": False,
                "Permissive": False, "Timeout": timeout}
        return self.request("POST", f"/modalities/{modality}/store", json=body)["ID"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def store_progress(self, job_id: str) -> StoreProgress:
        """How far a store job is (GET /jobs/{id}), for the app's live progress (issue 16)."""
        return StoreProgress.from_job(self.job(job_id))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job Orthanc still knows (running, pending and its JobsHistorySize finished ones)."""
        return self.get("/jobs", expand="")

    def modality_aet(self, name: str) -> str:
        """The AE title Orthanc calls for modality `name` (store jobs report it as RemoteAet)."""
        return self.get(f"/modalities/{name}/configuration")["AET"]

    def cancel_job(self, job_id: str) -> None:
        self.request("POST", f"/jobs/{job_id}/cancel", json={})

    def resume_job(self, job_id: str) -> None:
        self.request("POST", f"/jobs/{job_id}/resume", json={})

    def delete_study(self, orthanc_id: str) -> bool:
        """DELETE /studies/{id}: True when Orthanc deleted it, False when it had no such study (404)."""
        try:
            self.request("DELETE", f"/studies/{orthanc_id}")
        except OrthancError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def study_disk_size(self, orthanc_id: str) -> int:
        """Bytes the study's instances take in Orthanc's storage (GET /studies/{id}/statistics)."""
        return int(self.get(f"/studies/{orthanc_id}/statistics")["DiskSize"])

    def series_disk_size(self, orthanc_id: str) -> int:
        """Bytes the series' instances take in Orthanc's storage (GET /series/{id}/statistics)."""
        return int(self.get(f"/series/{orthanc_id}/statistics")["DiskSize"])


# A node unreachable this long is taken for dead: Orthanc keeps store jobs in memory only
# (SaveJobs is off), so its jobs are gone and are reported as unknown (404), which makes
# the worker send them again through a live node (docs/scaling.md, "Failure modes").
NODE_GONE_S = 30.0


class OrthancNodes(OrthancClient):
    """Several Orthanc nodes sharing one index and one storage, seen as one Orthanc.

    Resources, changes and metadata live in the shared index, so any node answers for
    them: requests go to the node that last answered and fail over to the next when it
    cannot be reached. A request that may have reached a node (a timeout, a dropped
    connection) is not sent to another one: only a refused connection is, so a store is
    never started twice. Jobs live in one node's memory (the Orthanc Book, "Scalability",
    multiple writers): the node that accepted a store is remembered, a job of unknown
    node is looked for on each, and /jobs is the union of every reachable node's list.
    Modalities are cached by each node (DicomModalitiesInDatabase): changes go to all.
    """

    def __init__(self, nodes: list[OrthancClient], clock: Any = time.monotonic):
        if not nodes:
            raise ValueError("at least one Orthanc node")
        self.nodes = nodes
        self.current = 0
        self.clock = clock
        self.down_since: dict[int, float] = {}
        self.job_node: dict[str, int] = {}

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def _on(self, index: int, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self.nodes[index].request(method, path, **kwargs)
        except OrthancUnavailable:
            self.down_since.setdefault(index, self.clock())
            raise
        self.down_since.pop(index, None)
        return answer

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method in ("PUT", "DELETE") and path.startswith("/modalities/"):
            # Each node caches its modalities (DicomModalitiesInDatabase): change them on all,
            # in the same order, so that each writes the same list back to the shared index.
            answers = [self._on(index, method, path, **kwargs) for index in range(len(self.nodes))]
            return answers[0]
        last: OrthancUnavailable | None = None
        for step in range(len(self.nodes)):
            index = (self.current + step) % len(self.nodes)
            try:
                answer = self._on(index, method, path, **kwargs)
            except OrthancUnavailable as exc:
                if method != "GET" and not exc.refused:
                    raise
                last = exc
                continue
            self.current = index
            return answer
        assert last is not None
        raise last

    def gone(self, index: int) -> bool:
        """Node `index` has not answered for NODE_GONE_S: taken for dead, its jobs lost."""
        since = self.down_since.get(index)
        return since is not None and self.clock() - since >= NODE_GONE_S

    def stable_on_every_node(self, study_id: str) -> bool:
        """False while any reachable node still counts the study unstable (its own timer).

        A node that does not answer is skipped: its timers died with it, and the
        stability sweep stands in for its announcement.
        """
        for index in range(len(self.nodes)):
            try:
                study = self._on(index, "GET", f"/studies/{study_id}")
            except OrthancUnavailable:
                continue
            except OrthancError as exc:
                if exc.status == 404:
                    continue
                raise
            if not study.get("IsStable"):
                return False
        return True

    def store_async(self, modality: str, resources: list[str], timeout: int = 60) -> str:
        job_id = super().store_async(modality, resources, timeout)
        self.job_node[job_id] = self.current
        return job_id

    def _job_request(self, method: str, job_id: str, suffix: str = "", **kwargs: Any) -> Any:
        """A request about one job, to the node that holds it.

        404 when no node knows it, counting a node that is gone (NODE_GONE_S) as not
        knowing it; OrthancUnavailable while a node that may hold it does not answer.
        """
        path = f"/jobs/{job_id}{suffix}"
        known = self.job_node.get(job_id)
        order = [known] if known is not None else []
        order += [i for i in range(len(self.nodes)) if i != known]
        unreachable: OrthancUnavailable | None = None
        for index in order:
            try:
                answer = self._on(index, method, path, **kwargs)
            except OrthancUnavailable as exc:
                if not self.gone(index):
                    unreachable = exc
                continue
            except OrthancError as exc:
                if exc.status == 404:
                    continue
                raise
            self.job_node[job_id] = index
            return answer
        if unreachable is not None:
            raise unreachable
        self.job_node.pop(job_id, None)
        raise OrthancError(f"Orthanc {method} {path} -> HTTP 404: no live node knows this job", status=404)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._job_request("GET", job_id)

    def cancel_job(self, job_id: str) -> None:
        self._job_request("POST", job_id, "/cancel", json={})

    def resume_job(self, job_id: str) -> None:
        self._job_request("POST", job_id, "/resume", json={})

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of every reachable node; raises only when no node answers."""
        found: list[dict[str, Any]] = []
        answered = False
        for index in range(len(self.nodes)):
            try:
                found += self._on(index, "GET", "/jobs", params={"expand": ""})
                answered = True
            except OrthancUnavailable:
                continue
        if not answered:
            raise OrthancUnavailable("no Orthanc node is reachable")
        return found


def orthanc_verify(settings: Settings) -> ssl.SSLContext | bool:
    """httpx's `verify` for Orthanc's REST API: the hub's CA when HTTPS is on."""
    context = settings.orthanc_tls_context()
    return True if context is None else context


def _error_from(response: httpx.Response) -> OrthancError:
    details = ""
    orthanc_status = None
    try:
        body = response.json()
        details = body.get("Details") or body.get("Message") or ""
        orthanc_status = body.get("OrthancStatus")
    except ValueError:
        details = response.text[:200]
    return OrthancError(
        f"Orthanc {response.request.method} {response.request.url.path} -> HTTP {response.status_code}"
        + (f": {details}" if details else ""),
        status=response.status_code,
        orthanc_status=orthanc_status,
    )
