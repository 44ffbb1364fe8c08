"""The dispatcher's handling of Orthanc job states it cannot produce for real in a test.

Orthanc's `DicomModalityStore` jobs never enter the Retry state by themselves, so the
Retry policy (let Orthanc retry up to the job's deadline, then cancel it and record a
failed store) is checked here against a small fake status source: a scripted sequence
of `GET /jobs/{id}` answers and a fake clock that each answer moves forward. The
database writes are replaced by lists. Paused and Running past the deadline are
checked for real in tests/integration/test_orthanc_job_states.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.envfile import ensure_env_file, read_env_file
from core.orthanc_client import CANCELED_JOB_ERROR
from core.settings import DEFAULTS_FILE, settings_from_values
from worker.dispatcher import ClaimedJob, Dispatcher, JobWatch, Verdict


def settings(tmp_path: Path, **overrides: str):
    env = tmp_path / ".env"
    ensure_env_file(env, DEFAULTS_FILE)
    return settings_from_values(read_env_file(DEFAULTS_FILE) | read_env_file(env) | overrides)


def status(state: str, instances: int = 3, **extra: Any) -> dict[str, Any]:
    return {"State": state, "Content": {"InstancesCount": instances, "ParentResources": ["s1"]}, **extra}


class FakeOrthanc:
    """Answers GET /jobs/{id} from a script of (seconds since start, status); a cancel ends it in Failure."""

    def __init__(self, script: list[tuple[float, dict[str, Any]]]):
        self.script = list(script)
        self.now = 0.0
        self.cancelled: list[str] = []
        self.resumed: list[str] = []

    def job(self, job_id: str) -> dict[str, Any]:
        if self.cancelled:
            return status("Failure", ErrorCode=CANCELED_JOB_ERROR, ErrorDescription="This job was canceled")
        self.now, answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return answer

    def cancel_job(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def resume_job(self, job_id: str) -> None:
        self.resumed.append(job_id)

    def series_disk_size(self, orthanc_id: str) -> int:
        return 2**20  # 1 MB


class OutcomeDispatcher(Dispatcher):
    """A dispatcher whose outcomes are recorded in lists instead of the database."""

    def __init__(self, settings, orthanc: FakeOrthanc):
        super().__init__(settings, engine=None, orthanc=orthanc, worker_id="w")  # type: ignore[arg-type]
        self.clock = lambda: orthanc.now  # type: ignore[method-assign]
        self.outcomes: list[tuple[str, Any, Any]] = []

    def _succeed(self, batch, status, start) -> None:
        self.outcomes.append(("succeeded", status["State"], None))

    def _store_failed(self, batch, error, code, start) -> None:
        self.outcomes.append(("failed", error, code))

    def _release(self, job_ids) -> None:
        self.outcomes.append(("released", job_ids, None))


BATCH = [ClaimedJob(1, 1, "PACS", "delivery", "oj", 1)]


def test_retry_within_the_deadline_is_left_to_orthanc(tmp_path):
    orthanc = FakeOrthanc([(0, status("Running")), (10, status("Retry")), (20, status("Retry")),
                           (30, status("Pending")), (40, status("Running")), (50, status("Success"))])
    dispatcher = OutcomeDispatcher(settings(tmp_path, SEND_DEADLINE_FLOOR_S="100"), orthanc)
    dispatcher._poll(BATCH, "oj", start=0.0)
    assert dispatcher.outcomes == [("succeeded", "Success", None)]
    assert orthanc.cancelled == [] and orthanc.resumed == []


def test_retry_past_the_deadline_is_cancelled_and_recorded_as_a_failed_store(tmp_path):
    orthanc = FakeOrthanc([(0, status("Running")), (3, status("Retry")), (10, status("Retry"))])
    dispatcher = OutcomeDispatcher(settings(tmp_path, SEND_DEADLINE_FLOOR_S="5", SEND_DEADLINE_INSTANCES_PER_S="100",
                                            SEND_DEADLINE_MB_PER_S="100"), orthanc)
    dispatcher._poll(BATCH, "oj", start=0.0)
    assert orthanc.cancelled == ["oj"]
    [(outcome, error, code)] = dispatcher.outcomes
    assert outcome == "failed" and code == CANCELED_JOB_ERROR
    assert error.startswith("Orthanc job oj still Retry after 10 s (deadline 5 s for 3 instances")
    assert error.endswith("cancelled in Orthanc")


def test_a_job_of_few_large_instances_gets_the_time_its_megabytes_need(tmp_path):
    """The instance count alone would cut a 100 MB job of 4 instances short."""
    sizes: list[int] = []

    def size_mb() -> float:
        sizes.append(1)
        return 100.0

    now = [0.0]
    watch = JobWatch("oj", settings(tmp_path, SEND_DEADLINE_FLOOR_S="10", SEND_DEADLINE_INSTANCES_PER_S="2",
                                    SEND_DEADLINE_MB_PER_S="1"), age_s=0, size_mb=size_mb, clock=lambda: now[0])
    running = status("Running", instances=4)
    now[0] = 11
    assert watch.see(running) is Verdict.WAIT and sizes == []  # within floor + 4 / 2
    now[0] = 20
    assert watch.see(running) is Verdict.WAIT and sizes == [1]  # past it: the size is asked for, once
    now[0] = 105
    assert watch.see(running) is Verdict.WAIT and sizes == [1]
    now[0] = 111
    assert watch.see(running) is Verdict.CANCEL
    assert watch.reason == "Orthanc job oj still Running after 111 s (deadline 110 s for 4 instances, 100.0 MB)"


def test_time_paused_does_not_count_against_the_deadline(tmp_path):
    now = [0.0]
    watch = JobWatch("oj", settings(tmp_path, SEND_DEADLINE_FLOOR_S="10", SEND_PAUSED_GRACE_S="1000"),
                     age_s=0, size_mb=lambda: None, clock=lambda: now[0])
    assert watch.see(status("Running", instances=0)) is Verdict.WAIT
    now[0] = 5
    assert watch.see(status("Paused", instances=0)) is Verdict.RESUME
    now[0] = 500
    assert watch.see(status("Paused", instances=0)) is Verdict.WAIT  # still paused, within the grace
    now[0] = 504
    assert watch.see(status("Running", instances=0)) is Verdict.WAIT  # 5 s running: 0 to 5, then 504
    now[0] = 510
    assert watch.see(status("Running", instances=0)) is Verdict.CANCEL
    assert "still Running after 11 s" in watch.reason
