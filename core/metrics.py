"""Metrics as CloudWatch embedded metric format (EMF) log lines: no agent, no PutMetricData.

A Lambda's stdout goes to CloudWatch Logs, which extracts the metrics of every EMF line. The adapter has no log
shipper on the GPU host, so it sends its EMF lines with PutLogEvents itself (`LogShipper`); CloudWatch Logs extracts
them the same way (the `x-amzn-logs-format: json/emf` header is optional:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Generation_PutLogEvents.html).
The format: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

Every metric's name and unit is declared once here; the alarms and the dashboard (modules/observability.py) import
these names, so a renamed metric cannot leave an alarm watching nothing.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# The EMF specification's limits: at most 100 metrics per line and 30 dimensions per set.
MAX_METRICS_PER_LINE = 100
MAX_DIMENSIONS = 30


@dataclass(frozen=True)
class Metric:
    """A metric's name and CloudWatch unit, and the dimension names it is published with (a tuple of keys)."""

    name: str
    unit: str
    dimensions: tuple[str, ...] = ()
    meaning: str = ""


# -- tasks (the adapter, when a task settles) -------------------------------------------------------------------------
TASKS_ENDED = Metric("TasksEnded", "Count", ("Type", "Outcome"), "tasks settled, by type and terminal status")
TIME_QUEUED = Metric("TimeQueued", "Seconds", ("Type",), "submit -> the settled attempt's claim")
TIME_RUNNING = Metric("TimeRunning", "Seconds", ("Type",), "the settled attempt's claim -> its end")
ATTEMPTS = Metric("Attempts", "Count", ("Type",), "attempts a settled task used")
GPU_SECONDS = Metric("GpuSeconds", "Seconds", ("Type",), "GPU time a settled task used")
TASK_COST = Metric("TaskCost", "None", ("Type",), "USD a settled task cost (GPU_HOURLY_USD)")
# -- GPU hosts (the adapter, once a minute per slot) -------------------------------------------------------------------
GPU_BUSY_MINUTES = Metric("GpuBusyMinutes", "Count", (), "slot-minutes spent running a task")
GPU_IDLE_MINUTES = Metric("GpuIdleMinutes", "Count", (), "slot-minutes with no task while the host was up")
GPU_UTILIZATION = Metric("GpuUtilization", "Percent", (), "nvidia-smi utilization.gpu, mean over the GPUs")
GPU_MEMORY_USED = Metric("GpuMemoryUsed", "Megabytes", (), "nvidia-smi memory.used, summed over the GPUs")
# -- the controller (one line per run) ---------------------------------------------------------------------------------
INSTANCE_STARTS = Metric("InstanceStarts", "Count", (), "GPU instances started (or desired capacity raised by)")
INSTANCE_STOPS = Metric("InstanceStops", "Count", (), "GPU instances stopped (or desired capacity lowered by)")
INSTANCES_UP = Metric("InstancesUp", "Count", (), "GPU instances pending or running")
TASKS_WAITING = Metric("TasksWaiting", "Count", (), "messages visible or delayed in the task queue")
TASKS_OVERDUE = Metric("TasksOverdue", "Count", (), "RUNNING tasks past their type's timeout_s")
STUCK_RECOVERIES = Metric("StuckWorkerRecoveries", "Count", ("Step",), "stuck GPU hosts rebooted or stopped")
STUCK_STEPS = ("reboot", "stop")  # STUCK_RECOVERIES' Step values, in the order the controller takes them
# -- the API (one line per accepted or refused submit) -----------------------------------------------------------------
SUBMITS = Metric("TasksSubmitted", "Count", ("Type",), "tasks accepted by the API")
SUBMITS_REFUSED = Metric("SubmitsRefused", "Count", (), "submits refused (invalid, too large, unknown type)")

ALL = (
    TASKS_ENDED,
    TIME_QUEUED,
    TIME_RUNNING,
    ATTEMPTS,
    GPU_SECONDS,
    TASK_COST,
    GPU_BUSY_MINUTES,
    GPU_IDLE_MINUTES,
    GPU_UTILIZATION,
    GPU_MEMORY_USED,
    INSTANCE_STARTS,
    INSTANCE_STOPS,
    INSTANCES_UP,
    TASKS_WAITING,
    TASKS_OVERDUE,
    STUCK_RECOVERIES,
    SUBMITS,
    SUBMITS_REFUSED,
)


def emf(
    namespace: str,
    values: Mapping[Metric, float],
    *,
    dimensions: Mapping[str, str] | None = None,
    at_ms: int | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """One EMF document: `values` (metric -> value) published under `namespace` with `dimensions` (every metric of
    one line shares its dimension set, so metrics with different dimension names go on different lines).
    `properties` ride along as searchable log fields, not metrics."""
    dims = dict(dimensions or {})
    if not values:
        raise ValueError("an EMF line needs at least one metric")
    if len(values) > MAX_METRICS_PER_LINE or len(dims) > MAX_DIMENSIONS:
        raise ValueError(f"EMF allows {MAX_METRICS_PER_LINE} metrics and {MAX_DIMENSIONS} dimensions per line")
    for metric in values:
        missing = [d for d in metric.dimensions if d not in dims]
        if missing or set(dims) != set(metric.dimensions):
            raise ValueError(
                f"metric {metric.name} is published with dimensions {metric.dimensions}, got {sorted(dims)}"
            )
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if at_ms is None else at_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dims)] if dims else [[]],
                    "Metrics": [{"Name": m.name, "Unit": m.unit} for m in values],
                }
            ],
        },
        **properties,
        **dims,
    }
    for metric, value in values.items():
        doc[metric.name] = value
    return doc


def emit(
    namespace: str,
    values: Mapping[Metric, float],
    *,
    dimensions: Mapping[str, str] | None = None,
    write: Callable[[str], Any] | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """Write one EMF line to `write` (default: stdout, which a Lambda's runtime sends to CloudWatch Logs)."""
    doc = emf(namespace, values, dimensions=dimensions, **properties)
    line = json.dumps(doc, separators=(",", ":"), default=str)
    (write or _stdout)(line)
    return doc


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class LogShipper:
    """Buffers EMF lines and sends them to one log stream with PutLogEvents (the adapter's `write` for `emit`).

    `flush()` sends what is buffered (at most `MAX_BATCH` events per call, oldest first, as PutLogEvents requires
    chronological order within a batch); the adapter calls it from its loop and on exit. A failed send keeps the
    lines (up to `max_buffered`, the oldest dropped beyond) for the next flush: a metric is never worth a task.
    https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html"""

    MAX_BATCH = 10_000  # PutLogEvents: at most 10,000 events per call...
    MAX_BATCH_BYTES = 1_048_576  # ...and 1 MiB, counting each event's message in UTF-8 plus 26 bytes
    EVENT_OVERHEAD = 26

    def __init__(self, logs_client: Any, *, group: str, stream: str, max_buffered: int = 5000) -> None:
        self.logs = logs_client
        self.group = group
        self.stream = stream
        self.max_buffered = max_buffered
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stream_ready = False
        self.last_error: str | None = None  # why the last flush sent nothing (the caller logs it)

    def __call__(self, line: str) -> None:
        with self._lock:
            self._buffer.append({"timestamp": int(time.time() * 1000), "message": line})
            del self._buffer[: max(0, len(self._buffer) - self.max_buffered)]

    def flush(self) -> int:
        """Send the buffer; returns how many lines went out (0 on a failure, which keeps them)."""
        with self._lock:
            size, count = 0, 0
            for event in self._buffer[: self.MAX_BATCH]:
                size += len(event["message"].encode()) + self.EVENT_OVERHEAD
                if size > self.MAX_BATCH_BYTES:
                    break
                count += 1
            batch, self._buffer = self._buffer[:count], self._buffer[count:]
        if not batch:
            return 0
        try:
            self._ensure_stream()
            self.logs.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=batch)
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            with self._lock:
                self._buffer[:0] = batch
                del self._buffer[: max(0, len(self._buffer) - self.max_buffered)]
            return 0
        self.last_error = None
        return len(batch)

    def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
            self.logs.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
        self._stream_ready = True
