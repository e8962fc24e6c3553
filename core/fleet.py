"""Fleet mode's rule, as a pure function: the GPU fleet's desired capacity from the backlog.

In fleet mode (modules/config.py gpu_mode = "fleet") the GPUs are an EC2 Auto Scaling group whose warm pool holds
stopped instances, returned to it on scale-in (ReuseOnScaleIn), so scaling out is starting a stopped instance with
its disk, not a fresh launch. The controller (functions/shutdown) owns the desired capacity; AWS owns which instance
starts or leaves. What the rule decides, from the same Observation as core/idle.py:

- SCALE_OUT when the backlog needs more instances than the group is asked for: needed = ceil(demand / slots),
  demand = core.idle.task_demand (queued + in flight, each at least 1 while its signal holds), bounded by the
  group's MaxSize. One task wakes one instance; a burst wakes enough, never more.
- Never lower the desired capacity while anything waits or runs. An instance that ran out of work leaves on its
  own: its adapter clears its scale-in protection when its slots are idle and, after the idle window, leaves
  through the group (adapter/fleet.py); a busy instance keeps its protection, and Auto Scaling never picks a
  protected instance for scale-in ("Use instance scale-in protection",
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html).
- SCALE_IN is the backstop for adapters that cannot leave by themselves (dead, or autostop off): when nothing waits
  or runs (core.idle.idle_blocker), every in-service member has been up `min_uptime_s`, and the whole fleet has been
  idle for the idle window, the desired capacity goes down to the number of protected members (0 unless an
  adapter still holds protection: lowering it below them would only defer their scale-in to the moment their
  protection is cleared, skipping their idle window).

No I/O and no clock: `now` comes in the Observation, the group in a Fleet (functions/shutdown reads both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .idle import Observation, Policy, decision_log, idle_blocker, task_demand

# Auto Scaling's LifecycleState values (DescribeAutoScalingGroups Instances[].LifecycleState;
# https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_Instance.html) this rule reads.
IN_SERVICE = "InService"
PENDING_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})


class FleetAction(StrEnum):
    SCALE_OUT = "SCALE_OUT"
    SCALE_IN = "SCALE_IN"
    NONE = "NONE"


@dataclass(frozen=True)
class Member:
    """One instance of the group or of its warm pool, as Auto Scaling reports it."""

    instance_id: str
    lifecycle_state: str  # InService, Pending, Terminating:Wait, Warmed:Stopped, Warmed:Pending:Wait, ...
    protected: bool = False  # ProtectedFromScaleIn
    launch_time: float | None = None  # EC2 LaunchTime (the last start), epoch seconds; None: not known

    @property
    def in_service(self) -> bool:
        return self.lifecycle_state == IN_SERVICE


@dataclass(frozen=True)
class Fleet:
    """The group: its capacity settings and members (DescribeAutoScalingGroups), and its warm pool
    (DescribeWarmPool)."""

    name: str
    desired: int
    min_size: int
    max_size: int
    members: tuple[Member, ...] = ()
    warm: tuple[Member, ...] = field(default_factory=tuple)

    @property
    def protected(self) -> int:
        return sum(1 for m in self.members if m.protected)


@dataclass(frozen=True)
class FleetDecision:
    action: FleetAction
    desired: int  # the desired capacity to set (the current one for NONE)
    reason: str

    def to_log(self) -> dict[str, Any]:
        return decision_log(self)


def instances_needed(obs: Observation, policy: Policy, *, slots: int, max_size: int) -> int:
    """ceil(tasks / slots), bounded by the group's MaxSize: how many instances the backlog needs right now."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    return min(max_size, math.ceil(task_demand(obs, policy) / slots))


def _idle_since(obs: Observation, fleet: Fleet) -> float:
    marks = [m.launch_time for m in fleet.members if m.in_service and m.launch_time is not None]
    marks += [t for t in (obs.last_finished_at, obs.running_heartbeat_at) if t is not None]
    return max(marks) if marks else obs.now  # no history at all: as if just started, a full window to come


def decide_fleet(obs: Observation, policy: Policy, fleet: Fleet, *, slots: int) -> FleetDecision:
    """The desired capacity the group should have now (see the module docstring)."""
    needed = instances_needed(obs, policy, slots=slots, max_size=fleet.max_size)
    tasks = task_demand(obs, policy)
    counts = (
        f"{tasks} task(s) at {slots} per instance: {needed} instance(s) needed (max {fleet.max_size}), "
        f"desired {fleet.desired}"
    )
    if needed > fleet.desired:
        return FleetDecision(FleetAction.SCALE_OUT, needed, f"{counts}: scale out to {needed}")
    blocker = idle_blocker(obs, policy)
    if blocker is not None:
        return FleetDecision(FleetAction.NONE, fleet.desired, f"{counts}; {blocker}: idle instances leave on their own")
    floor = max(fleet.min_size, fleet.protected)
    if fleet.desired <= floor:
        return FleetDecision(FleetAction.NONE, fleet.desired, f"idle; desired {fleet.desired} is already the floor")
    young = [
        m.instance_id
        for m in fleet.members
        if m.in_service and m.launch_time is not None and obs.now - m.launch_time < policy.min_uptime_s
    ]
    if young:
        return FleetDecision(
            FleetAction.NONE, fleet.desired, f"idle, but {', '.join(young)} up < min uptime {policy.min_uptime_s:.0f}s"
        )
    idle_for = obs.now - _idle_since(obs, fleet)
    if idle_for < policy.idle_window_s:
        return FleetDecision(
            FleetAction.NONE, fleet.desired, f"idle {idle_for:.0f}s < window {policy.idle_window_s:.0f}s"
        )
    return FleetDecision(
        FleetAction.SCALE_IN,
        floor,
        f"no work waiting or running and idle {idle_for:.0f}s >= window {policy.idle_window_s:.0f}s: "
        f"scale in to {floor} ({fleet.protected} protected)",
    )


def confirm_scale_in(first: FleetDecision, second: FleetDecision) -> FleetDecision:
    """The re-check right before lowering the desired capacity: lower it only if a fresh read agrees, and never
    below what that read wants."""
    if first.action != FleetAction.SCALE_IN:
        return first
    if second.action == FleetAction.SCALE_IN:
        return FleetDecision(FleetAction.SCALE_IN, max(first.desired, second.desired), second.reason)
    return FleetDecision(second.action, second.desired, f"re-check changed the decision: {second.reason}")
