"""Retention: which studies leave Orthanc, why the others stay, and the deletion itself.

Shared by the worker's retention thread (worker/retention.py), `./orthanc retention`
(--dry-run, --run) and the app's Retention page, so all three give the same answer.
Policy (docs/operations.md, "Retention"), off unless set:

- **days:** a fully delivered study goes RETENTION_DAYS_AFTER_DELIVERY days after its
  last delivery. A rule's `keep_days` (routing.yml) replaces that number for the studies
  it routed; with several rules the longest keep wins, and a rule without keep_days
  counts with the global value (off = forever).
- **disk:** when DICOM_STORAGE has less than RETENTION_DISK_LOW_MB free, fully delivered
  studies go, oldest first (first arrival), until RETENTION_DISK_HIGH_MB are free. A
  study inside a rule's keep_days is spared.

Never deleted, whatever the policy: a study with a job that is not succeeded or
cancelled; with an AI result pending (a non-cancelled job to the AI node and no AI
result series); touched in the last hour (`QUIET`: an arrival, or any event on its
timeline); never delivered anywhere; with no Orthanc id. Each kept study has its reason.

Deleting is `DELETE /studies/{id}` on Orthanc's REST API, in batches of RETENTION_BATCH:
one transaction per batch locks the batch's study rows, checks each again, asks Orthanc
for the study's LastUpdate (nothing received in the last hour), deletes it, and records
it (core/recorder.study_purged: purged_at, a `purged` event, an audit line). A study
Orthanc no longer has (404: deleted by a run that died before its commit) is recorded
the same way. The rows stay: QI figures survive. Reads and writes carry no patient data.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

from core import recorder
from core.disk import MIB, mib
from core.orthanc_client import OrthancClient, OrthancError, parse_orthanc_time
from core.rules import RulesError, parse_rules
from core.rules_status import STATUS_NAME as RULES_STATUS
from core.settings import Settings
from core.states import EventType, JobState, Purpose, SeriesKind

log = logging.getLogger(__name__)

QUIET = timedelta(hours=1)  # nothing touched more recently than this is deleted
RETENTION_LOCK_KEY = 0x0A7C_0004  # beside ALERTER_LOCK_KEY (worker/alerter.py): one retention run at a time
SCAN_PAGE = 1000
AUDIT_RUN = "retention.run"

Action = Literal["days", "disk", "keep"]


class RetentionBusy(RuntimeError):
    """Another retention run (a worker's, or an operator's) holds the lock."""


@dataclass(frozen=True)
class Policy:
    """The settings and the rules' keep_days, as one run sees them."""

    days: int  # 0: no deletion by age
    low_bytes: int  # 0: no disk watermark
    high_bytes: int
    batch: int
    ai_modality: str
    keep_days: Mapping[str, int] = field(default_factory=dict)  # rule name -> keep_days

    @classmethod
    def from_settings(cls, settings: Settings, keep_days: Mapping[str, int]) -> Policy:
        return cls(settings.retention_days_after_delivery, settings.retention_disk_low_mb * MIB,
                   settings.retention_disk_high_mb * MIB, settings.retention_batch, settings.ai_modality,
                   dict(keep_days))

    @property
    def active(self) -> bool:
        """False: nothing can ever be deleted (no days, no watermark, no rule keep_days)."""
        return bool(self.days or self.low_bytes or self.keep_days)

    def describe(self) -> str:
        parts = [f"by age: {self.days} days after delivery" if self.days else "by age: off",
                 f"by disk: under {mib(self.low_bytes)} free, until {mib(self.high_bytes)}" if self.low_bytes
                 else "by disk: off"]
        if self.keep_days:
            parts.append("rules: " + ", ".join(f"{n} keep_days {d}" for n, d in sorted(self.keep_days.items())))
        return "; ".join(parts)


@dataclass(frozen=True)
class Facts:
    """What retention reads of one study (no patient data)."""

    study: int
    orthanc_id: str | None
    accession: str | None
    received_at: datetime
    touched_at: datetime | None
    delivered_at: datetime | None
    open_jobs: int
    open_job: int | None
    open_state: str | None
    ai_pending: bool
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """One study's verdict. `disk`: deletable under disk pressure, else kept for `reason`."""

    facts: Facts
    action: Action
    reason: str
    category: str  # the reason's kind, for counts: open job, AI pending, touched, ...
    due_at: datetime | None = None  # when the day policy deletes it (None: never by age)

    @property
    def study(self) -> int:
        return self.facts.study

    def row(self, zone: Any) -> dict[str, Any]:
        """A table row for the CLI and the app: internal number, accession, dates, the reason."""
        f = self.facts
        return {"study": f.study, "accession": f.accession or "", "received_at": f.received_at,
                "delivered_at": f.delivered_at, "action": self.action, "reason": self.reason}


def _day(at: datetime, zone: Any) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d")


def _ago(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


def decide(f: Facts, policy: Policy, now: datetime, zone: Any) -> Decision:
    """The verdict on one study at `now`: the never-delete guards first, then the policy."""
    if f.open_jobs:
        more = f" (and {f.open_jobs - 1} more)" if f.open_jobs > 1 else ""
        return Decision(f, "keep", f"job #{f.open_job} is {f.open_state}{more}: not final", "job not final")
    if f.ai_pending:
        return Decision(f, "keep", f"AI result pending from {policy.ai_modality}", "AI result pending")
    if f.touched_at is not None and now - f.touched_at < QUIET:
        return Decision(f, "keep", f"touched {_ago((now - f.touched_at).total_seconds())} ago "
                        "(nothing is deleted within an hour of its last arrival or event)", "touched in the last hour")
    if f.delivered_at is None:
        return Decision(f, "keep", "never delivered to a destination", "never delivered")
    if f.orthanc_id is None:
        return Decision(f, "keep", "no Orthanc id recorded", "no Orthanc id")
    delivered = _day(f.delivered_at, zone)
    explicit = {r: policy.keep_days[r] for r in f.rules if r in policy.keep_days}
    global_applies = not f.rules or any(r not in policy.keep_days for r in f.rules)
    values = list(explicit.values()) + ([policy.days] if global_applies else [])
    days = None if 0 in values else max(values)  # the longest keep wins; off (0) keeps for ever
    longest_rule = max(explicit, key=explicit.__getitem__) if explicit else None
    source = (f"rule {longest_rule} keep_days" if longest_rule and explicit[longest_rule] == days
              else "RETENTION_DAYS_AFTER_DELIVERY")
    due_at = f.delivered_at + timedelta(days=days) if days else None
    if due_at is not None and now >= due_at:
        return Decision(f, "days", f"delivered {delivered}, more than {days} days ago ({source} {days})",
                        "due by age", due_at)
    if longest_rule is not None:
        until = f.delivered_at + timedelta(days=explicit[longest_rule])
        if now < until:
            return Decision(f, "keep", f"kept by rule {longest_rule} (keep_days {explicit[longest_rule]}) until "
                            f"{_day(until, zone)}", "rule keep_days", due_at)
    if due_at is not None:
        reason = f"delivered {delivered}; kept until {_day(due_at, zone)} ({source} {days})"
    else:
        reason = f"delivered {delivered}; no deletion by age (RETENTION_DAYS_AFTER_DELIVERY off)"
    # A disk candidate: deleted only while the disk is under RETENTION_DISK_LOW_MB, else kept for `reason`.
    return Decision(f, "disk" if policy.low_bytes else "keep", reason, "delivered, not due", due_at)


# --- reading ---------------------------------------------------------------------------------

_FACTS = """
SELECT s.id, s.orthanc_id, s.accession_number, s.first_received_at,
       GREATEST(s.last_received_at, ser.last_at, ev.last_at) AS touched_at,
       j.open_jobs, j.open_job, j.open_state, j.delivered_at, j.ai_jobs, ser.ai_results, rl.rules
FROM studies s
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state <> ALL(:final)) AS open_jobs,
           min(id) FILTER (WHERE state <> ALL(:final)) AS open_job,
           (array_agg(state ORDER BY id) FILTER (WHERE state <> ALL(:final)))[1] AS open_state,
           max(finished_at) FILTER (WHERE purpose = :delivery AND state = :succeeded) AS delivered_at,
           count(*) FILTER (WHERE purpose = :ai AND state <> :cancelled) AS ai_jobs
    FROM routing_jobs WHERE study_id = s.id
) j
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE kind = :ai_result) AS ai_results, max(last_received_at) AS last_at
    FROM series WHERE study_id = s.id
) ser
CROSS JOIN LATERAL (SELECT max(at) AS last_at FROM events WHERE study_id = s.id) ev
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(DISTINCT r.name), '{}') AS rules
    FROM events e CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(e.detail -> 'rules') = 'array' THEN e.detail -> 'rules' ELSE '[]'::jsonb END) r(name)
    WHERE e.study_id = s.id AND e.type = :rule_matched
) rl
WHERE s.purged_at IS NULL AND s.first_received_at IS NOT NULL AND {where}
"""
_PAGE = "(s.first_received_at, s.id) > (:after_at, :after_id) ORDER BY s.first_received_at, s.id LIMIT :page"
_IDS = "s.id = ANY(:ids) ORDER BY s.first_received_at, s.id"
_PARAMS: dict[str, Any] = {
    "final": [JobState.SUCCEEDED, JobState.CANCELLED], "delivery": Purpose.DELIVERY, "ai": Purpose.AI,
    "succeeded": JobState.SUCCEEDED, "cancelled": JobState.CANCELLED, "ai_result": SeriesKind.AI_RESULT,
    "rule_matched": EventType.RULE_MATCHED,
}


def _facts(rows: Sequence[Any]) -> list[Facts]:
    return [Facts(r.id, r.orthanc_id, r.accession_number, r.first_received_at, r.touched_at, r.delivered_at,
                  int(r.open_jobs), r.open_job, r.open_state, bool(r.ai_jobs and not r.ai_results),
                  tuple(sorted(r.rules or ()))) for r in rows]


def scan(conn: Connection) -> Iterator[Facts]:
    """Every study still in Orthanc (not purged), oldest first, a page at a time (studies_kept_idx)."""
    after: tuple[datetime, int] = (datetime(1, 1, 1, tzinfo=UTC), 0)
    while True:
        rows = conn.execute(text(_FACTS.replace("{where}", _PAGE)),
                            {**_PARAMS, "after_at": after[0], "after_id": after[1], "page": SCAN_PAGE}).all()
        yield from _facts(rows)
        if len(rows) < SCAN_PAGE:
            return
        after = (rows[-1].first_received_at, rows[-1].id)


def facts_of(conn: Connection, ids: Sequence[int]) -> list[Facts]:
    return _facts(conn.execute(text(_FACTS.replace("{where}", _IDS)), {**_PARAMS, "ids": list(ids)}).all())


def rule_keep_days(conn: Connection, settings: Settings) -> dict[str, int]:
    """keep_days of each rule, from the rules the worker runs on (config_status), else from the file.

    A rule since removed no longer overrides: its studies follow RETENTION_DAYS_AFTER_DELIVERY.
    """
    content = conn.execute(text("SELECT content FROM config_status WHERE name = :n AND content IS NOT NULL"),
                           {"n": RULES_STATUS}).scalar()
    if isinstance(content, list):
        return {str(r["name"]): int(r["keep_days"]) for r in content
                if isinstance(r, dict) and r.get("keep_days") and r.get("name")}
    try:
        rules = parse_rules(settings.routing_rules.read_text(encoding="utf-8"), settings.routing_rules.name).rules
    except (OSError, RulesError):
        return {}
    return {r.name: r.keep_days for r in rules if r.keep_days}


# --- the plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run would do now: `purge` in order (by age first, then by disk), and every kept study."""

    now: datetime
    policy: Policy
    free_bytes: int | None
    total_bytes: int | None
    decisions: list[Decision]
    purge: list[Decision]  # by age, then (dry run, disk pressure) the disk candidates that free enough
    disk_queue: list[Decision]  # every disk candidate, oldest first (the run takes from it while free < high)
    estimated_bytes: int | None = None  # dry run: what `purge` frees, by Orthanc's statistics

    @property
    def pressure(self) -> bool:
        return bool(self.policy.low_bytes and self.free_bytes is not None and self.free_bytes < self.policy.low_bytes)

    def kept(self) -> list[Decision]:
        going = {d.study for d in self.purge}
        return [_as_kept(d, self) for d in self.decisions if d.study not in going]

    def kept_counts(self) -> Counter[str]:
        return Counter(d.category for d in self.kept())

    def oldest_kept(self) -> Decision | None:
        return next(iter(self.kept()), None)


def _as_kept(d: Decision, plan: Plan) -> Decision:
    """A disk candidate left in place is kept: say why (the disk is not low, or enough was freed)."""
    if d.action != "disk":
        return d
    why = ("the disk is not under RETENTION_DISK_LOW_MB" if not plan.pressure
           else "deleting older studies frees enough")
    return replace(d, action="keep", reason=f"{d.reason}; {why}")


def make_plan(conn: Connection, settings: Settings, *, now: datetime, free_bytes: int | None,
              total_bytes: int | None) -> Plan:
    """Decide for every study still in Orthanc (reads only)."""
    policy = Policy.from_settings(settings, rule_keep_days(conn, settings))
    decisions = [decide(f, policy, now, settings.zone) for f in scan(conn)]
    return Plan(now, policy, free_bytes, total_bytes, decisions,
                purge=[d for d in decisions if d.action == "days"],
                disk_queue=[d for d in decisions if d.action == "disk"])


def dry_run(engine: Engine, orthanc: OrthancClient | None, settings: Settings, *, now: datetime | None = None,
            free_bytes: int | None = None, total_bytes: int | None = None) -> Plan:
    """The plan of a run now, without deleting. Under disk pressure the disk candidates that would go
    are chosen by their size in Orthanc (`orthanc` needed then; one request per study considered)."""
    now = now or datetime.now(UTC)
    if free_bytes is None:
        free_bytes, total_bytes = measure(settings)
    with engine.connect() as conn:
        plan = make_plan(conn, settings, now=now, free_bytes=free_bytes, total_bytes=total_bytes)
    if not plan.pressure or orthanc is None or free_bytes is None:
        return plan
    need = plan.policy.high_bytes - free_bytes
    freed = sum(_size(orthanc, d) for d in plan.purge)
    chosen = []
    for d in plan.disk_queue:
        if freed >= need:
            break
        freed += _size(orthanc, d)
        chosen.append(replace(d, reason=_disk_reason(plan)))
    plan.purge = plan.purge + chosen
    plan.estimated_bytes = freed
    return plan


def _size(orthanc: OrthancClient, d: Decision) -> int:
    assert d.facts.orthanc_id is not None
    try:
        return orthanc.study_disk_size(d.facts.orthanc_id)
    except OrthancError as exc:
        if exc.status == 404:
            return 0
        raise


def _disk_reason(plan: Plan) -> str:
    free = "?" if plan.free_bytes is None else mib(plan.free_bytes)
    return (f"DICOM_STORAGE has {free} free, under RETENTION_DISK_LOW_MB ({mib(plan.policy.low_bytes)}): "
            f"delivered studies go oldest first until {mib(plan.policy.high_bytes)} are free")


def measure(settings: Settings) -> tuple[int | None, int | None]:
    """Free and total bytes of DICOM_STORAGE (None when it cannot be measured)."""
    try:
        usage = shutil.disk_usage(settings.dicom_storage)
    except OSError:
        return None, None
    return usage.free, usage.total


# --- the run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    plan: Plan
    purged: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # checked again in the batch: kept after all
    failed: dict[int, str] = field(default_factory=dict)
    free_after: int | None = None

    def summary(self) -> dict[str, Any]:
        return {"purged": len(self.purged), "skipped": len(self.skipped), "failed": len(self.failed),
                "policy": self.plan.policy.describe(), "free_before": self.plan.free_bytes,
                "free_after": self.free_after, "kept": dict(self.plan.kept_counts())}


@contextlib.contextmanager
def exclusive(engine: Engine) -> Iterator[None]:
    """Hold RETENTION_LOCK_KEY for one operator's run; RetentionBusy when a worker is running it."""
    with engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": RETENTION_LOCK_KEY}).scalar_one():
            raise RetentionBusy("a retention run is under way (a worker's, or another operator's): try again shortly")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RETENTION_LOCK_KEY})
            conn.commit()


def run(
    engine: Engine, orthanc: OrthancClient, settings: Settings, *, actor: str, source: str,
    now: datetime | None = None, measure_free: Callable[[], tuple[int | None, int | None]] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Delete what the policy says, in batches, and record the run. The caller holds RETENTION_LOCK_KEY.

    `now` is the policy's clock (tests move it); recorded times are the real clock's.
    Stops early when `stop()` turns true or Orthanc fails (the rest waits for the next run).
    """
    now = now or datetime.now(UTC)
    measure_free = measure_free or (lambda: measure(settings))
    free, total = measure_free()
    with engine.connect() as conn:
        plan = make_plan(conn, settings, now=now, free_bytes=free, total_bytes=total)
    result = RunResult(plan, free_after=free)
    if plan.policy.active:
        try:
            _purge_all(engine, orthanc, settings, result, actor, source, now, measure_free, stop)
        except OrthancError as exc:
            log.warning("retention stopped: Orthanc failed; the rest waits for the next run",
                        extra={"fields": {"error": str(exc).splitlines()[0][:200]}})
    purged = set(result.purged)
    plan.purge = [d for d in plan.decisions if d.study in purged]
    oldest = plan.oldest_kept()
    with engine.begin() as conn:
        recorder.retention_ran(
            conn, at=datetime.now(UTC), actor=actor, source=source, purged=len(result.purged),
            failed=len(result.failed), kept=len(plan.decisions) - len(purged),
            oldest_kept=None if oldest is None else {**oldest.row(settings.zone), "category": oldest.category},
            detail=result.summary())
    return result


def _purge_all(engine: Engine, orthanc: OrthancClient, settings: Settings, result: RunResult, actor: str,
               source: str, now: datetime, measure_free: Callable[[], tuple[int | None, int | None]],
               stop: Callable[[], bool]) -> None:
    plan = result.plan
    size = plan.policy.batch
    for i in range(0, len(plan.purge), size):
        if stop():
            return
        _purge_batch(engine, orthanc, settings, plan.purge[i:i + size], result, actor, source, now)
    queue = list(plan.disk_queue)
    result.free_after = measure_free()[0]
    if not plan.pressure:
        return  # below LOW starts a disk round; then it goes on until HIGH
    while queue and result.free_after is not None and result.free_after < plan.policy.high_bytes and not stop():
        batch, queue = queue[:size], queue[size:]
        _purge_batch(engine, orthanc, settings, [replace(d, reason=_disk_reason(plan)) for d in batch], result,
                     actor, source, now)
        result.free_after = measure_free()[0]


def _purge_batch(engine: Engine, orthanc: OrthancClient, settings: Settings, batch: Sequence[Decision],
                 result: RunResult, actor: str, source: str, now: datetime) -> None:
    """One transaction: lock the rows, check each study again, delete it in Orthanc, record it.

    An Orthanc failure ends the batch: what was deleted before it is committed, then the
    error goes up (the run stops; the rest waits for the next one).
    """
    wanted = {d.study: d for d in batch}
    failure: OrthancError | None = None
    with engine.begin() as conn:
        locked = conn.execute(
            text("SELECT id FROM studies WHERE id = ANY(:ids) AND purged_at IS NULL ORDER BY id "
                 "FOR UPDATE SKIP LOCKED"), {"ids": list(wanted)}).scalars().all()
        again = {f.study: decide(f, result.plan.policy, now, settings.zone) for f in facts_of(conn, locked)}
        for study, planned in wanted.items():
            d = again.get(study)
            if d is None or d.action == "keep" or (planned.action == "days" and d.action != "days"):
                result.skipped[study] = d.reason if d is not None else "changed, or locked, meanwhile"
                continue
            try:
                purged = _purge_one(conn, orthanc, d, planned, now, actor, source)
            except OrthancError as exc:
                result.failed[study] = str(exc).splitlines()[0][:200]
                failure = exc
                break
            if purged is None:
                result.skipped[study] = "Orthanc received part of it in the last hour"
            elif purged:
                result.purged.append(study)
    log.info("retention batch done", extra={"fields": {"purged_so_far": len(result.purged), "batch": len(batch)}})
    if failure is not None:
        raise failure


def _purge_one(conn: Connection, orthanc: OrthancClient, d: Decision, planned: Decision, now: datetime,
               actor: str, source: str) -> bool | None:
    """Delete one study in Orthanc and record it: True done, False recorded already, None spared."""
    assert d.facts.orthanc_id is not None
    orthanc_id = d.facts.orthanc_id
    try:
        stored = orthanc.study(orthanc_id)
    except OrthancError as exc:
        if exc.status != 404:
            raise
        stored = None
    last = parse_orthanc_time(stored.get("LastUpdate")) if stored else None
    if last is not None and now - last < QUIET:
        return None  # an instance the worker has not recorded yet
    deleted = stored is not None and orthanc.delete_study(orthanc_id)
    detail: dict[str, Any] = {"policy": planned.action, "reason": planned.reason, "orthanc_id": orthanc_id,
                              "delivered_at": d.facts.delivered_at}
    if not deleted:
        detail["orthanc"] = "already gone"
    return recorder.study_purged(conn, d.study, at=datetime.now(UTC), actor=actor, source=source, detail=detail)
