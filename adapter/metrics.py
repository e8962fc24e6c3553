"""The adapter's metrics: EMF lines (core/metrics.py, the one home of every name and unit) under METRICS_NAMESPACE.

- When a task ends (`task_ended`, on every settle to a terminal status): one line with {Type, Outcome}:
  TasksEnded = 1; one with {Type}: Attempts, TimeQueued (created_at -> the settled attempt's started_at, where an
  attempt ever started) and, where the settle write was the held attempt's own (TaskStore.finish: it records
  `gpu_seconds`), TimeRunning and GpuSeconds (that attempt's claim -> end) and TaskCost (its `cost_usd`, only with
  GPU_HOURLY_USD). Ends no attempt of ours held (a cancel of a worker gone, the DLQ sweep) carry no GPU time.
- Once a minute from the loop (`tick`) and at exit (`close`, for the last part of a minute), one line without
  dimensions: GpuBusyMinutes and GpuIdleMinutes (slot-minutes of the interval in which a slot ran a message, and
  the rest), and, where `nvidia-smi` is on PATH and answers within NVIDIA_SMI_TIMEOUT_S, GpuUtilization (mean
  utilization.gpu of the GPUs) and GpuMemoryUsed (memory.used summed, MiB) from
  `nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits`
  (https://docs.nvidia.com/deploy/nvidia-smi/index.html); absent, failing or unparsable: those two are left out,
  and at exit too (a shutdown does not wait on the driver).

Where lines go: with METRICS_LOG_GROUP, a core.metrics.LogShipper buffers them and `tick`/`close` send the buffer
with PutLogEvents (one call a minute, not one per task: a short task costs no AWS call here) to a stream named after
the instance (its id, else the worker id); CloudWatch Logs extracts the metrics
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Generation_PutLogEvents.html).
Unset: stdout (journald). Every line also carries `event` "metrics", `task_id` (null on the host line) and
`worker`, the fields every stdout line of the adapter has. A metric that cannot be written is logged and dropped:
a metric is never worth a task.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from core import logs
from core import metrics as m
from core.tasks import TaskRecord, now_ms

log = logging.getLogger("adapter.metrics")

METRICS_INTERVAL_S = 60.0  # CloudWatch's standard resolution: one value a minute
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT_S = 5.0  # the loop waits on it: a hung driver must not hold the loop for long
EVENT = "metrics"


def gpu_readings(
    command: Sequence[str] = NVIDIA_SMI_QUERY, timeout_s: float = NVIDIA_SMI_TIMEOUT_S
) -> dict[m.Metric, float]:
    """GpuUtilization and GpuMemoryUsed from one `nvidia-smi` query (lines "37, 1024", one per GPU); {} when the
    tool is not on PATH, fails, times out or reports no number (an "[N/A]" GPU is skipped)."""
    if shutil.which(command[0]) is None:
        return {}
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0:
        return {}
    utilization, memory = [], []
    for line in done.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            used_pct, used_mib = float(parts[0]), float(parts[1])
        except ValueError:
            continue
        utilization.append(used_pct)
        memory.append(used_mib)
    if not utilization:
        return {}
    return {m.GPU_UTILIZATION: round(sum(utilization) / len(utilization), 2), m.GPU_MEMORY_USED: sum(memory)}


class SlotTime:
    """Busy slot-seconds since the last `take`, from `begin`/`end` around each slot's work (any thread)."""

    def __init__(self, slots: int, clock: Callable[[], float]) -> None:
        self.slots = slots
        self._clock = clock
        self._lock = threading.Lock()
        self._busy = 0  # slots busy now
        self._since = self._start = clock()
        self._busy_s = 0.0

    def _advance(self, now: float) -> None:
        self._busy_s += self._busy * (now - self._since)
        self._since = now

    def begin(self) -> None:
        with self._lock:
            self._advance(self._clock())
            self._busy += 1

    def end(self) -> None:
        with self._lock:
            self._advance(self._clock())
            self._busy -= 1

    def elapsed(self) -> float:
        with self._lock:
            return self._clock() - self._start

    def take(self) -> tuple[float, float]:
        """(busy slot-seconds, all slot-seconds) since the last take; the next interval starts now."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            busy, total = self._busy_s, self.slots * (now - self._start)
            self._busy_s, self._start = 0.0, now
            return busy, total


@dataclass(eq=False)  # a service object: compared by identity
class Meter:
    """The worker's metrics. `write`: where EMF lines go (a LogShipper, or stdout by default); `flush`: sends what
    `write` buffered (the shipper's flush; None for stdout)."""

    _: KW_ONLY
    namespace: str
    slots: int
    worker: str
    write: Callable[[str], Any] | None = None
    flush: Callable[[], Any] | None = None
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = now_ms
    gpus: Callable[[], dict[m.Metric, float]] = gpu_readings
    every_s: float = METRICS_INTERVAL_S
    slot_time: SlotTime = field(init=False)

    def __post_init__(self) -> None:
        self.slot_time = SlotTime(self.slots, self.clock)

    @contextmanager
    def occupied(self) -> Iterator[None]:
        """Around a slot's work on one message: that slot is busy for its duration."""
        self.slot_time.begin()
        try:
            yield
        finally:
            self.slot_time.end()

    def task_ended(self, record: TaskRecord) -> None:
        """The lines of a task that reached a terminal status (`record`: the item as settled; a record that is not
        terminal, such as a cancel that found the task running elsewhere, is that worker's to report)."""
        if not record.terminal:
            return
        at = record.finished_at if record.finished_at is not None else self.wall_ms()
        per_type: dict[m.Metric, float] = {m.ATTEMPTS: record.attempts}
        if record.started_at is not None:
            per_type[m.TIME_QUEUED] = max(0, record.started_at - record.created_at) / 1000
        if record.gpu_seconds is not None:
            per_type[m.TIME_RUNNING] = per_type[m.GPU_SECONDS] = record.gpu_seconds
        if record.cost_usd is not None:
            per_type[m.TASK_COST] = record.cost_usd
        self._emit({m.TASKS_ENDED: 1}, {"Type": record.type, "Outcome": record.status.value}, at, record.task_id)
        self._emit(per_type, {"Type": record.type}, at, record.task_id)

    def tick(self) -> None:
        """From the loop: once `every_s` has passed, the interval's host line, then the buffer goes out."""
        if self.slot_time.elapsed() >= self.every_s:
            self.report()

    def close(self) -> None:
        """At exit: the last (partial) interval's line, then the buffer goes out."""
        self.report(with_gpus=False)

    def report(self, *, with_gpus: bool = True) -> None:
        """The host line of the interval since the last one (a new interval starts), then the buffer goes out."""
        busy_s, total_s = self.slot_time.take()
        values: dict[m.Metric, float] = {
            m.GPU_BUSY_MINUTES: round(busy_s / 60, 4),
            m.GPU_IDLE_MINUTES: round(max(0.0, total_s - busy_s) / 60, 4),
        }
        if with_gpus:
            values.update(self.gpus())
        self._emit(values, {}, self.wall_ms(), None)
        if self.flush is not None:
            try:
                self.flush()
            except Exception as err:
                logs.event(log, "metrics_flush_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")

    def _emit(self, values: dict[m.Metric, float], dims: dict[str, str], at_ms: int, task_id: str | None) -> None:
        try:
            m.emit(
                self.namespace,
                values,
                dimensions=dims,
                write=self.write,
                at_ms=at_ms,
                event=EVENT,
                task_id=task_id,
                worker=self.worker,
            )
        except Exception as err:
            logs.event(log, "metrics_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
