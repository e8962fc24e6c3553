"""The stuck-worker rule, as a pure function: the GPU instances, their adapters' liveness, the RUNNING tasks and
whether work waits, at `now` -> the recovery step for each running instance.

A dead or hung adapter with work waiting would otherwise keep its GPU on forever: the idle rule (core/idle.py) never
stops an instance while work waits, and the on-node autostop is part of the adapter that hung. The rule (times in
epoch seconds, T = STUCK_AFTER_SECONDS):

- An instance's *progress* is the latest of its adapter's liveness `seen_at` (core.hosts.Liveness, written by the
  adapter's loop every LIVENESS_SECONDS) and the heartbeat_at/started_at of the RUNNING tasks whose `worker` is the
  one on that liveness item (a loop waiting for a free slot still shows its tasks' heartbeats).
- It is *stuck* when EC2 reports it `running`, it has been up (since its LaunchTime, the last start) at least T, work
  waits (core.idle.waiting_reason), and its progress is older than T. An instance whose adapter never wrote a
  liveness item is never judged: an adapter from before liveness existed would look stuck all the time.
- Recovery, one step per run: first REBOOT (RebootInstances: "equivalent to an operating system reboot",
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RebootInstances.html, which restarts the adapter's unit);
  a reboot counts for the running interval it was made in (rebooted_at >= LaunchTime: a reboot does not reset
  LaunchTime, a start does). Still stuck T after that reboot with no progress since: STOP it, and put the RUNNING
  tasks of its worker back in the queue.
- CLEAR: progress after the last recorded step (a reboot or a stop) ends the episode; the next one starts with a
  reboot again.
- While the RUNNING tasks could not all be read (more than the bounded read takes), nothing is rebooted or stopped:
  an unread task may hold the progress that says the instance is fine.

An instance stopped for being stuck is left out of starts for the quarantine (`quarantined`), so the normal START rule
does not hand the waiting work straight back to it in a loop: another instance takes it, or the next start after the
quarantine. No I/O, no clock: functions/shutdown/recovery.py reads the inputs and acts on the steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.hosts import Liveness
from core.instances import Instance, InstanceState
from core.tasks import TaskRecord

QUARANTINE_FACTOR = 3
"""An instance stopped for being stuck is left out of starts for QUARANTINE_FACTOR x STUCK_AFTER_SECONDS after the
stop: long enough that the work waiting goes to another instance (or waits) rather than straight back to the host
that just hung, short enough that an environment with a single GPU is not left without one for long."""


class StuckAction(StrEnum):
    """A recovery step; the values are the `Step` dimension of the StuckWorkerRecoveries metric (core/metrics.py)."""

    REBOOT = "reboot"
    STOP = "stop"
    CLEAR = "clear"
    NONE = "none"


@dataclass(frozen=True)
class StuckPolicy:
    stuck_after_s: float  # STUCK_AFTER_SECONDS

    @property
    def quarantine_s(self) -> float:
        return QUARANTINE_FACTOR * self.stuck_after_s


@dataclass(frozen=True)
class Step:
    """What to do about one running instance, and why. `requeue`: the RUNNING tasks a STOP puts back in the queue."""

    instance_id: str
    action: StuckAction
    reason: str
    progress_at: float | None = None
    requeue: tuple[str, ...] = ()

    def to_log(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instance_id": self.instance_id, "action": self.action.value, "reason": self.reason}
        out["progress_at"] = self.progress_at
        if self.requeue:
            out["requeue"] = list(self.requeue)
        return out


def _s(ms: int | None) -> float | None:
    return ms / 1000.0 if ms is not None else None


def held_by(live: Liveness, running: Iterable[TaskRecord]) -> list[TaskRecord]:
    """The RUNNING tasks the instance's adapter holds: their `worker` is the one on its liveness item."""
    if live.worker is None:
        return []
    return [t for t in running if t.worker == live.worker]


def progress_at(live: Liveness, running: Iterable[TaskRecord]) -> float | None:
    """The instance's last sign of progress (epoch seconds), or None if it never showed one."""
    marks = [live.seen_at] + [max(t.heartbeat_at or 0, t.started_at or 0) or None for t in held_by(live, running)]
    known = [m for m in marks if m is not None]
    return max(known) / 1000.0 if known else None


def _judge(
    inst: Instance, live: Liveness | None, running: Sequence[TaskRecord], waiting: str | None, now: float, t: float
) -> Step:
    iid = inst.instance_id
    if live is None or live.seen_at is None:
        return Step(iid, StuckAction.NONE, "no liveness recorded: an adapter that never wrote one is not judged")
    progress = progress_at(live, running)
    marks = [m for m in (_s(live.rebooted_at), _s(live.recovered_stop_at)) if m is not None]
    if marks and progress is not None and progress > max(marks):
        after = f"progress {progress - max(marks):.0f}s after the last recovery step"
        return Step(iid, StuckAction.CLEAR, after, progress)
    if inst.launch_time is None or now - inst.launch_time < t:
        up = "unknown" if inst.launch_time is None else f"{now - inst.launch_time:.0f}s"
        return Step(iid, StuckAction.NONE, f"up {up}, not yet {t:.0f}s", progress)
    if waiting is None:
        return Step(iid, StuckAction.NONE, "no work waits", progress)
    if progress is not None and now - progress < t:
        return Step(iid, StuckAction.NONE, f"progress {now - progress:.0f}s ago", progress)
    silent = "never" if progress is None else f"{now - progress:.0f}s ago"
    rebooted = _s(live.rebooted_at)
    if rebooted is None or rebooted < inst.launch_time:
        reason = f"stuck: up {now - inst.launch_time:.0f}s, {waiting}, last progress {silent}: reboot"
        return Step(iid, StuckAction.REBOOT, reason, progress)
    if now - rebooted < t:
        return Step(iid, StuckAction.NONE, f"stuck, rebooted {now - rebooted:.0f}s ago: waiting {t:.0f}s", progress)
    tasks = tuple(task.task_id for task in held_by(live, running))
    reason = f"still stuck {now - rebooted:.0f}s after its reboot, last progress {silent}: stop"
    return Step(iid, StuckAction.STOP, reason, progress, tasks)


def decide_stuck(
    instances: Iterable[Instance],
    liveness: Mapping[str, Liveness],
    running: Sequence[TaskRecord],
    *,
    waiting: str | None,
    now: float,
    policy: StuckPolicy,
    running_complete: bool = True,
) -> list[Step]:
    """One step per instance EC2 reports `running` (see the module docstring); NONE steps say why nothing is done."""
    steps = []
    for inst in instances:
        if inst.state != InstanceState.RUNNING:
            continue
        step = _judge(inst, liveness.get(inst.instance_id), running, waiting, now, policy.stuck_after_s)
        if step.action in (StuckAction.REBOOT, StuckAction.STOP) and not running_complete:
            step = Step(
                step.instance_id,
                StuckAction.NONE,
                f"{step.reason}, but not every RUNNING task was read: one of them may show progress",
                step.progress_at,
            )
        steps.append(step)
    return steps


def quarantined(liveness: Mapping[str, Liveness], *, now: float, policy: StuckPolicy) -> dict[str, float]:
    """Instance id -> until when (epoch seconds) it is left out of starts, for each one stopped for being stuck less
    than the quarantine ago."""
    out = {}
    for iid, live in liveness.items():
        stopped = _s(live.recovered_stop_at)
        if stopped is not None and now - stopped < policy.quarantine_s:
            out[iid] = stopped + policy.quarantine_s
    return out
