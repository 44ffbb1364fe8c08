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
    """Orthanc could not be reached at all (connection refused, timeout)."""


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
        return cls(settings.orthanc_url, settings.orthanc_username,
                   settings.orthanc_password.get_secret_value(), timeout, verify=orthanc_verify(settings))

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
            raise OrthancUnavailable(f"Orthanc is unreachable: {type(exc).__name__}: {exc}") from exc
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
