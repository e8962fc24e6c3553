"""The idle rule, as a pure function: what the system looks like right now (an Observation) -> what to do (a Decision).

Shared by the `shutdown-gpu-lambda` (the controller: run by the API after each submit, by the alarm and by a 1-minute
schedule) and by the
adapter's on-node autostop (adapter/autostop.py), so both judge "idle" the same way, with the same defaults
(`Policy.from_env`, over the settings declared in core/contract.py). No I/O, no clock: `now` is an
input, which is what lets the test table replay each known failure of the seed's metric alarm.

The rule (all times epoch seconds):
- Work is *waiting* when the queue holds a visible or delayed message, or a QUEUED item is young enough that its
  message may still be on the way (written before the send, or SQS's approximate counts lagging).
  A QUEUED item with an empty queue stops counting once it is older than the idle window (or
  QUEUED_TASK_MAX_AGE_SECONDS, if lower): the adapter can only ever get work through the queue, so a row whose
  message is gone (lost send, or past the queue's 1-day retention) would otherwise hold the GPU on for nothing.
- The system is *busy* when a message is in flight (a worker holds it) or a RUNNING item has a fresh heartbeat.
  Either one alone blocks a stop: the in-flight count is approximate, the heartbeat can lag. A RUNNING item whose
  heartbeat is older than `heartbeat_stale_s` AND whose message is not in flight belongs to a dead worker.
- STOP the running instances only when nothing waits, nothing is busy, each has been up `min_uptime_s`, and the
  system has been idle `idle_window_s`: idle since max(instance LaunchTime, newest finished_at of an ended task,
  last heartbeat of a dead RUNNING item). LaunchTime is reset by every start, so a fresh start always gets a window.
- START only as many instances as the work needs, one task per instance: needed = min(instances present, tasks),
  where tasks = queued (visible + delayed, at least 1 while work waits) + running (in-flight messages, at least 1
  while a RUNNING heartbeat is fresh). Start (needed - up) of the stopped ones, pending/running ones counting as up,
  so an instance is never started one more than needed, also when some are already up.
  A `stopping` instance cannot be started (EC2 answers IncorrectInstanceState): when the stopped ones fall short,
  the decision names the stopping ones still needed, and the handler either waits for `stopped` within its time
  budget or leaves them to the next scheduled run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from . import contract
from .instances import Instance, InstanceState
from .setting_fields import read_fields, setting_field


class Action(StrEnum):
    STOP = "STOP"
    START = "START"
    NONE = "NONE"


@dataclass(frozen=True)
class Policy:
    """The rule's thresholds, in seconds; defaults and meanings are the contract's settings of the same names."""

    idle_window_s: float = setting_field(contract.IDLE_WINDOW_SECONDS)
    min_uptime_s: float = setting_field(contract.MIN_UPTIME_SECONDS)
    queued_max_age_s: float = setting_field(contract.QUEUED_TASK_MAX_AGE_SECONDS)
    heartbeat_stale_s: float = setting_field(contract.HEARTBEAT_STALE_SECONDS)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Policy:
        return read_fields(cls, env)


@dataclass(frozen=True)
class Observation:
    """Direct reads of the queue, the task table and EC2, taken at `now` (never CloudWatch metrics)."""

    now: float
    visible: int = 0  # ApproximateNumberOfMessages
    in_flight: int = 0  # ApproximateNumberOfMessagesNotVisible
    delayed: int = 0  # ApproximateNumberOfMessagesDelayed
    newest_queued_at: float | None = None  # created_at of the newest QUEUED item (None: none)
    running_heartbeat_at: float | None = None  # freshest liveness seen on a RUNNING item (None: none)
    running_scan_complete: bool = True  # False: more RUNNING items exist than observe looked at
    last_finished_at: float | None = None  # newest finished_at of an ended task (None: none seen)
    instances: tuple[Instance, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    instance_ids: tuple[str, ...] = ()  # what the action applies to
    stopping_ids: tuple[str, ...] = ()  # work waits on these: start them once they reach `stopped`

    def to_log(self) -> dict[str, Any]:
        return decision_log(self)


def decision_log(decision: Any) -> dict[str, Any]:
    """A decision dataclass (Decision, core.fleet.FleetDecision) as a log record: its fields, the action as its
    plain value."""
    out = asdict(decision)
    out["action"] = decision.action.value
    return out


def waiting_reason(obs: Observation, policy: Policy) -> str | None:
    """Why work is waiting for a GPU, or None."""
    if obs.visible or obs.delayed:
        return f"queue holds {obs.visible} visible and {obs.delayed} delayed message(s)"
    if obs.newest_queued_at is not None:
        age = obs.now - obs.newest_queued_at
        if age < min(policy.idle_window_s, policy.queued_max_age_s):
            return f"a QUEUED task is {age:.0f}s old and its message may still be on the way"
    return None


def busy_reason(obs: Observation, policy: Policy) -> str | None:
    """Why a GPU is working right now, or None."""
    if obs.in_flight:
        return f"{obs.in_flight} message(s) in flight: a worker holds a task"
    if obs.running_heartbeat_at is not None:
        if not obs.running_scan_complete:
            return "RUNNING tasks exist beyond the ones checked: assume one is live"
        age = obs.now - obs.running_heartbeat_at
        if age < policy.heartbeat_stale_s:
            return f"a RUNNING task heartbeat {age:.0f}s ago"
    return None


def idle_blocker(obs: Observation, policy: Policy) -> str | None:
    """The checks both the Lambda and the on-node autostop run before any stop: None means nothing waits or runs."""
    return waiting_reason(obs, policy) or busy_reason(obs, policy)


def _idle_since(obs: Observation, inst: Instance) -> float:
    marks = [t for t in (inst.launch_time, obs.last_finished_at) if t is not None]
    if obs.running_heartbeat_at is not None:  # a dead worker's last sign of life still counts as activity
        marks.append(obs.running_heartbeat_at)
    # No LaunchTime and no history: treat as just started, so the instance gets a full window.
    return max(marks) if marks else obs.now


def task_demand(obs: Observation, policy: Policy) -> int:
    """How many tasks want an instance right now: queued plus running. Each count is approximate (SQS's), so a
    waiting or busy signal with a zero count still counts as one task."""
    queued = max(obs.visible + obs.delayed, 1) if waiting_reason(obs, policy) else 0
    running = max(obs.in_flight, 1) if busy_reason(obs, policy) else 0
    return queued + running


def _start_for(obs: Observation, policy: Policy, present: list[Instance], waiting: str) -> Decision:
    """Work waits: start the stopped instances the demand needs beyond those up, never more."""
    up = [i for i in present if i.state.up]
    stopped = [i.instance_id for i in present if i.state == InstanceState.STOPPED]
    stopping = [i.instance_id for i in present if i.state == InstanceState.STOPPING]
    tasks = task_demand(obs, policy)
    needed = min(len(present), tasks)
    missing = needed - len(up)
    counts = f"{waiting}; {tasks} task(s) for {len(present)} instance(s): {needed} needed, {len(up)} up"
    if missing <= 0:
        return Decision(Action.NONE, f"{counts}, enough to take it")
    start = tuple(stopped[:missing])
    later = tuple(stopping[: missing - len(start)])
    if start:
        note = f"; {len(later)} more once stopping ones have stopped" if later else ""
        return Decision(Action.START, f"{counts}: start {len(start)}{note}", start, later)
    return Decision(
        Action.NONE,
        f"{counts}; instance(s) still stopping, start once stopped "
        "(this run if it can wait, else the next scheduled run)",
        stopping_ids=later,
    )


def decide(obs: Observation, policy: Policy) -> Decision:
    present = [i for i in obs.instances if not i.state.gone]
    if not present:
        return Decision(Action.NONE, "no managed instance exists (missing or terminated)")
    up = [i for i in present if i.state.up]

    waiting = waiting_reason(obs, policy)
    if waiting:
        return _start_for(obs, policy, present, waiting)

    busy = busy_reason(obs, policy)
    if busy:
        return Decision(Action.NONE, busy)
    if not up:
        return Decision(Action.NONE, "idle and already stopped or stopping")

    eligible: list[str] = []
    notes: list[str] = []
    for inst in up:
        uptime = obs.now - inst.launch_time if inst.launch_time is not None else 0.0
        idle_for = obs.now - _idle_since(obs, inst)
        if inst.state != InstanceState.RUNNING:
            notes.append(f"{inst.instance_id} is {inst.state.value}")
        elif uptime < policy.min_uptime_s:
            notes.append(f"{inst.instance_id} up {uptime:.0f}s < min uptime {policy.min_uptime_s:.0f}s")
        elif idle_for < policy.idle_window_s:
            notes.append(f"{inst.instance_id} idle {idle_for:.0f}s < window {policy.idle_window_s:.0f}s")
        else:
            eligible.append(inst.instance_id)
    if not eligible:
        return Decision(Action.NONE, "idle but not long enough: " + "; ".join(notes))
    return Decision(
        Action.STOP, f"no work waiting or running; idle at least {policy.idle_window_s:.0f}s", tuple(eligible)
    )


def confirm_stop(first: Decision, second: Decision) -> Decision:
    """The re-check right before StopInstances: stop only what both looks agreed on."""
    if first.action != Action.STOP:
        return first
    if second.action != Action.STOP:
        return Decision(
            second.action, f"re-check changed the decision: {second.reason}", second.instance_ids, second.stopping_ids
        )
    both = tuple(i for i in first.instance_ids if i in second.instance_ids)
    if not both:
        return Decision(Action.NONE, "re-check: no instance is still eligible to stop")
    return Decision(Action.STOP, second.reason, both)
