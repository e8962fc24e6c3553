"""The cost report (`GET /cost`, `gpuq cost`): what finished tasks used and cost, what the GPUs were billed for, and
the difference (the idle overhead).

`build_report` is a pure function of
- task records (core.tasks.TaskRecord): each settled task carries the GPU time its attempts used (`gpu_seconds`)
  and what that cost at the adapter's price when it settled (`cost_usd`, GPU_HOURLY_USD / slots per GPU-hour);
- billed running intervals (core.hosts.RunInterval): one per instance start, from EC2's launch time to the last
  time the controller saw it running, each clipped to [since, until];
- the instance's hourly price (GPU_HOURLY_USD), None when unset.

Billed GPU-seconds are interval seconds x the instance's slots (one per GPU); billed USD is interval seconds x the
hourly price (EC2 bills a running instance, whatever its GPUs do; the instance states table in
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html). An interval ends when the
controller last saw the instance running, so billed time is short by at most one controller period per start.
The idle overhead is billed minus used, never negative: a task finished inside the window may have started before it, so
its GPU time can exceed what the window billed. Its USD is the idle GPU-seconds at the window's mean price per
GPU-second (billed USD / billed GPU-seconds), which is exact when every instance has the same slots.

`finished_since` reads the tasks: the terminal ones finished at or after `since`, through the status index (one
query per terminal status, newest first, stopping at the first item whose range key `created_at` is below `since`
minus LONGEST_TASK_MS: the index is sorted by it, so every later item is older still). That bound is the item's
own expiry: a task item expires RESULT_TTL_SECONDS after it was created until it ends (core.store.TaskStore.create),
and DynamoDB deletes expired items, typically within two days
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html). A task that waited and ran
longer than that may already be gone, so no bound counts it reliably; none tighter holds either, since a requeue
sends the task a fresh message (no queue retention or type timeout ends its wait).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .contract import GPU_HOURLY_USD
from .hosts import RunInterval
from .tasks import RESULT_TTL_SECONDS, TERMINAL, Page, TaskRecord, TaskStatus

LONGEST_TASK_MS = RESULT_TTL_SECONDS * 1000
"""The longest a task can wait and run and still be in the table (the module docstring says why)."""
REPORT_PAGE = 500  # index items per query page while reading a report's tasks
SECONDS_DIGITS, USD_DIGITS = 3, 6  # rounding of the report's numbers (a float sum is not exact past these)


class ReportScope(StrEnum):
    """Whose tasks a report counts: everyone's (an admin) or the caller's own."""

    ALL = "all"
    OWN = "own"


class PriceSource(StrEnum):
    """Where the report's hourly price came from."""

    SETTING = GPU_HOURLY_USD.name
    UNSET = "unset"


@dataclass(frozen=True)
class Price:
    hourly_usd: float | None  # the instance's price per hour; None: unknown (billed and idle USD are then too)
    source: PriceSource


@dataclass(frozen=True)
class Usage:
    """One row of a breakdown: the tasks of one type or one submitter. `unpriced`: tasks that used GPU time but
    carry no cost (settled while GPU_HOURLY_USD was unset), so `cost_usd` leaves them out."""

    key: str | None  # the type or the submitter (None: a task from before submitters were recorded)
    tasks: int
    gpu_seconds: float
    cost_usd: float
    unpriced: int


@dataclass(frozen=True)
class Overhead:
    """What the GPUs were billed for in the window, and how much of it no task used."""

    intervals: int
    billed_gpu_seconds: float
    billed_usd: float | None
    idle_gpu_seconds: float
    idle_usd: float | None


@dataclass(frozen=True)
class CostReport:
    since: int  # epoch ms
    until: int  # epoch ms: when the report was made
    scope: ReportScope
    price: Price
    tasks: int
    used_gpu_seconds: float
    cost_usd: float
    by_type: list[Usage]
    by_submitter: list[Usage]
    overhead: Overhead | None  # None: unknown or not the caller's to see (`overhead_note` says which)
    overhead_note: str | None


class _Row:
    def __init__(self) -> None:
        self.tasks = 0
        self.gpu_seconds = 0.0
        self.cost_usd = 0.0
        self.unpriced = 0

    def add(self, task: TaskRecord) -> None:
        self.tasks += 1
        self.gpu_seconds += task.gpu_seconds or 0.0
        if task.cost_usd is not None:
            self.cost_usd += task.cost_usd
        elif task.gpu_seconds:
            self.unpriced += 1

    def usage(self, key: str | None) -> Usage:
        return Usage(
            key=key,
            tasks=self.tasks,
            gpu_seconds=round(self.gpu_seconds, SECONDS_DIGITS),
            cost_usd=round(self.cost_usd, USD_DIGITS),
            unpriced=self.unpriced,
        )


def _breakdown(rows: dict[str | None, _Row]) -> list[Usage]:
    """Most expensive first, then most GPU time, then by key (None last), so the order is stable."""
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1].cost_usd, -kv[1].gpu_seconds, kv[0] is None, kv[0] or ""))
    return [row.usage(key) for key, row in ordered]


def clipped_seconds(interval: RunInterval, since_ms: int, until_ms: int) -> float:
    """The part of `interval` inside [since, until], in seconds."""
    start, end = max(interval.started_at, since_ms), min(interval.last_seen, until_ms)
    return max(0, end - start) / 1000.0


def overhead(
    intervals: Iterable[RunInterval], used_gpu_seconds: float, *, since_ms: int, until_ms: int, hourly_usd: float | None
) -> Overhead:
    count, billed_gpu, billed_instance_s = 0, 0.0, 0.0
    for interval in intervals:
        seconds = clipped_seconds(interval, since_ms, until_ms)
        if seconds <= 0:
            continue
        count += 1
        billed_instance_s += seconds
        billed_gpu += seconds * max(1, interval.slots)
    idle_gpu = max(0.0, billed_gpu - used_gpu_seconds)
    billed_usd = None if hourly_usd is None else billed_instance_s * hourly_usd / 3600.0
    idle_usd = None
    if billed_usd is not None:
        idle_usd = idle_gpu * billed_usd / billed_gpu if billed_gpu else 0.0
    return Overhead(
        intervals=count,
        billed_gpu_seconds=round(billed_gpu, SECONDS_DIGITS),
        billed_usd=None if billed_usd is None else round(billed_usd, USD_DIGITS),
        idle_gpu_seconds=round(idle_gpu, SECONDS_DIGITS),
        idle_usd=None if idle_usd is None else round(idle_usd, USD_DIGITS),
    )


def build_report(
    tasks: Iterable[TaskRecord],
    intervals: Iterable[RunInterval] | None,
    *,
    since_ms: int,
    until_ms: int,
    hourly_usd: float | None,
    scope: ReportScope,
    overhead_note: str | None = None,
) -> CostReport:
    """The report over the terminal tasks among `tasks` that finished in [since, until]. `intervals` None: the idle
    overhead is unknown or withheld, and `overhead_note` (then required) says why; it is never reported as zero."""
    if intervals is None and not overhead_note:
        raise ValueError("a report without intervals must say why (overhead_note)")
    if until_ms < since_ms:
        raise ValueError(f"until ({until_ms}) is before since ({since_ms})")
    total, by_type, by_submitter = _Row(), dict[str | None, _Row](), dict[str | None, _Row]()
    for task in tasks:
        if not task.terminal or task.finished_at is None or not since_ms <= task.finished_at <= until_ms:
            continue
        for rows, key in ((by_type, task.type), (by_submitter, task.submitted_by)):
            rows.setdefault(key, _Row()).add(task)
        total.add(task)
    used = total.usage(None)
    found = None
    if intervals is not None:
        found = overhead(intervals, total.gpu_seconds, since_ms=since_ms, until_ms=until_ms, hourly_usd=hourly_usd)
    return CostReport(
        since=since_ms,
        until=until_ms,
        scope=scope,
        price=Price(hourly_usd, PriceSource.UNSET if hourly_usd is None else PriceSource.SETTING),
        tasks=used.tasks,
        used_gpu_seconds=used.gpu_seconds,
        cost_usd=used.cost_usd,
        by_type=_breakdown(by_type),
        by_submitter=_breakdown(by_submitter),
        overhead=found,
        overhead_note=None if found is not None else overhead_note,
    )


class StatusLister(Protocol):
    """What `finished_since` needs of core.store.TaskStore."""

    def list_by_status(self, status: TaskStatus, *, limit: int = ..., cursor: dict[str, Any] | None = ...) -> Page: ...


def finished_since(store: StatusLister, since_ms: int) -> Iterator[TaskRecord]:
    """Terminal tasks finished at or after `since_ms`, read newest first per terminal status until `created_at`
    falls below `since_ms - LONGEST_TASK_MS` (the module docstring says why that bound)."""
    oldest = since_ms - LONGEST_TASK_MS
    for status in sorted(TERMINAL):
        cursor: dict[str, Any] | None = None
        done = False
        while not done:
            page = store.list_by_status(status, limit=REPORT_PAGE, cursor=cursor)
            for task in page.items:
                if task.created_at < oldest:  # newest first: every later item is older still
                    done = True
                    break
                if task.finished_at is not None and task.finished_at >= since_ms:
                    yield task
            cursor = page.cursor
            done = done or cursor is None
