"""The controller's metrics, one set per run, as CloudWatch embedded metric format lines (core/metrics.py: names,
units and dimensions are declared there) on stdout, where the Lambda runtime hands them to CloudWatch Logs, which
extracts the metrics (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format.html).

- InstancesUp: instances pending or running as the run first saw them (fleet mode: members Pending or InService).
- TasksWaiting: messages visible or delayed in the task queue.
- InstanceStarts / InstanceStops: what this run did: instances started or stopped (fleet mode: how much the desired
  capacity was raised or lowered by; a stuck member replaced through SetInstanceHealth counts under
  StuckWorkerRecoveries only, since the group launches its replacement itself).
- TasksOverdue: RUNNING tasks running longer than their type's `timeout_s` (core/task_types.json; a type the
  registry does not know is not counted).
- StuckWorkerRecoveries, dimension Step (reboot|stop): one line per kind of step taken, only when one was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from core import metrics as m
from core.task_types import DEFAULT_PATH, load_registry
from core.tasks import TaskRecord

from .stuck import StuckAction

Write = Callable[[str], Any]


@cache
def type_timeouts() -> Mapping[str, float]:
    """Task type -> timeout_s, from the registry the Lambda zip carries (read once per execution environment)."""
    registry = load_registry(DEFAULT_PATH)
    return {name: float(t.timeout_s) for name, t in registry.types.items()}


def overdue(running: Iterable[TaskRecord], *, now: float, timeouts: Mapping[str, float]) -> int:
    """How many RUNNING tasks have run (since their attempt's claim) longer than their type allows."""
    count = 0
    for task in running:
        limit = timeouts.get(task.type)
        if limit is not None and task.started_at is not None and now - task.started_at / 1000.0 > limit:
            count += 1
    return count


@dataclass(frozen=True)
class RunCounts:
    """What one run saw and did, as the metrics count it."""

    up: int
    waiting: int
    starts: int = 0
    stops: int = 0
    overdue: int = 0
    recoveries: Mapping[StuckAction, int] | None = None


def changed(outcome: Sequence[Mapping[str, Any]]) -> int:
    """Instances an adopt/create-mode outcome list moved (refusals excluded)."""
    return sum(1 for o in outcome if "to" in o)


def recoveries(done: Sequence[Mapping[str, Any]]) -> dict[StuckAction, int]:
    """Reboot and stop steps carried out (refusals excluded), from functions/shutdown/recovery.apply's log."""
    out: dict[StuckAction, int] = {}
    for step in done:
        action = StuckAction(step["action"])
        if action in (StuckAction.REBOOT, StuckAction.STOP) and "error" not in step:
            out[action] = out.get(action, 0) + 1
    return out


def emit_run(namespace: str, counts: RunCounts, *, write: Write | None = None, **properties: Any) -> list[dict]:
    """Write the run's metric lines; returns the documents written."""
    values = {
        m.INSTANCES_UP: float(counts.up),
        m.TASKS_WAITING: float(counts.waiting),
        m.INSTANCE_STARTS: float(counts.starts),
        m.INSTANCE_STOPS: float(counts.stops),
        m.TASKS_OVERDUE: float(counts.overdue),
    }
    docs = [m.emit(namespace, values, write=write, **properties)]
    for action, n in sorted((counts.recoveries or {}).items()):
        dims = {m.STUCK_RECOVERIES.dimensions[0]: action.value}
        docs.append(m.emit(namespace, {m.STUCK_RECOVERIES: float(n)}, dimensions=dims, write=write, **properties))
    return docs
