"""EC2 Auto Scaling as AWS documents it, where moto 5.2.5 does not: a model that runs inside moto's own backend.

`install()` (localaws/server.py `moto_server` calls it, so every server the tests and the demo start has it) patches
moto's Auto Scaling classes in this process once; the model's state is kept per moto group object (weakly), so
POST /moto-api/reset clears it with the groups and the patches stay. The parts: localaws/autoscaling_api.py, the API
surface (which calls reach this model, the two calls moto lacks); localaws/autoscaling_state.py, the states and
settings; localaws/autoscaling_group.py, one group's evaluation; this module, the entry points (the tick, lookups,
the target lifecycle state, Spot notices).

What stays moto's own: the groups' configuration and storage (CreateAutoScalingGroup, UpdateAutoScalingGroup,
DescribeAutoScalingGroups, tags, PutLifecycleHook/DescribeLifecycleHooks, the warm pool's stored configuration), its
launching of instances from the launch template with the group's propagated tags, its InstanceState records (what
DescribeAutoScalingGroups and DescribeAutoScalingInstances serialize), and EC2 itself (instances, stop, start).

What is modelled here instead, each with the AWS page it follows:
- Lifecycle. Members are Pending -> InService after `Settings.pending_s`; moto puts them InService at once.
- Warm pool (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-warm-pools.html). moto stores
  PutWarmPool and never uses it. Here the pool holds max(MinSize, (MaxGroupPreparedCapacity or MaxSize) -
  DesiredCapacity) instances (less members beyond the desired capacity that stay, protected), launched from the group's
  template as Warmed:Pending and stopped after `Settings.warm_prepare_s` (Warmed:Stopped: "As soon as an instance
  finishes launching into the warm pool, Amazon EC2 Auto Scaling stops ... the instance. [It] does not wait for user
  data to finish running", https://docs.aws.amazon.com/autoscaling/ec2/userguide/warm-pool-instance-lifecycle.html). A
  scale-out takes Warmed:Stopped instances first and starts them (the same instance id, EC2 stopped -> running,
  LaunchTime reset as EC2 resets it on a start), Pending -> InService; only an empty pool makes it launch ("If your warm
  pool is depleted when there is a scale-out event, instances will launch directly into the Auto Scaling group"). A pool
  too large terminates its newest Warmed:Stopped instances. Only PoolState Stopped is modelled, and PutWarmPool on a
  group with a mixed instances policy is refused ("You cannot add a warm pool to Auto Scaling groups that have a mixed
  instances policy or that launch Spot Instances").
- Scale-in (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html). When Pending +
  InService members exceed the desired capacity, unprotected members leave, InService ones first, oldest first
  (AWS's default termination policy breaks ties by Availability Zone balance, oldest launch template and billing
  hour: not modelled, one template and per-second billing make them moot here). With InstanceReusePolicy
  ReuseOnScaleIn they return to the pool stopped; otherwise they are terminated and the pool refills with a fresh
  launch, as AWS does.
- Protection (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html):
  a protected member is never chosen; "If all instances in an Auto Scaling group are protected from scale in, and a
  scale in event occurs, its desired capacity is decremented. However, the Auto Scaling group can't terminate the
  required number of instances until their instance scale in protection settings are disabled": the desired
  capacity is set, and the excess leaves at the first evaluation after a protection is cleared. An instance leaving
  the pool takes the group's NewInstancesProtectedFromScaleIn.
- The termination lifecycle hook (https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks.html): a
  leaving member waits in Terminating:Wait, or Warmed:Pending:Wait when it returns to the pool ("instances returning
  to the warm pool pause in the Warmed:Pending:Wait state for the EC2_INSTANCE_TERMINATING lifecycle action",
  warm-pool-instance-lifecycle.html), a pool instance being removed in Warmed:Terminating:Wait, until every
  terminating hook of the group is completed (CompleteLifecycleAction, by InstanceId or LifecycleActionToken) or
  times out: HeartbeatTimeout after the last RecordLifecycleActionHeartbeat, at most GlobalTimeout (100 x
  HeartbeatTimeout, 48 h at most), then its DefaultResult. CONTINUE and ABANDON both let a terminating instance
  proceed ("both ABANDON and CONTINUE allow the instance to terminate", completing-lifecycle-hooks.html); AWS
  documents no other outcome for one returning to the pool, so it proceeds there too. Launch hooks are not modelled:
  fleet_resources.py refuses them, and one put through PutLifecycleHook is stored by moto and pauses nothing.
- TerminateInstanceInAutoScalingGroup (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/
  API_TerminateInstanceInAutoScalingGroup.html): the member is terminated (through the hook), never returned to the
  pool ("When an instance is terminated, the instance status changes to terminated. You can't ... start an instance
  after you've terminated it"); with ShouldDecrementDesiredCapacity the desired capacity drops (never below
  MinSize: refused), without it a replacement comes from the pool. Refused for a pool instance ("This operation
  cannot be called on instances in a warm pool"), as is SetInstanceProtection.
- Health: an InService member EC2 reports stopped or stopping (a bare poweroff), once it has been InService for
  the group's HealthCheckGracePeriod, is Unhealthy and replaced: terminated through the hook, its replacement taken
  from the pool (ec2-auto-scaling-health-checks.html: an instance in any state other than running is unhealthy;
  health-check-grace-period.html). EC2 TerminateInstances on a member or a pool instance removes it; the group
  replaces it the same way.
- Spot (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-capacity-rebalancing.html), for a
  mixed instances policy that is all Spot: instances are launched as Spot (InstanceLifecycle spot) of the first
  override's type (capacity-optimized picks the pool with the most spare capacity, which a local AWS does not have).
  `interrupt(id)`: the two-minute notice; "Amazon EC2 Auto Scaling calls the termination lifecycle hook and attempts
  to launch a replacement immediately", and EC2 terminates the instance when the notice runs out, hook or not.
  `recommend_rebalance(id)`: with CapacityRebalance, a replacement is launched first and the old instance leaves
  (through the hook) once the replacement is InService; without it, nothing happens.
- Target lifecycle state (https://docs.aws.amazon.com/autoscaling/ec2/userguide/
  retrieving-target-lifecycle-state-through-imds.html): `target_lifecycle_state(id)`, the steady state an instance
  is headed for (InService, Terminated, Warmed:Stopped, Warmed:Terminated, Standby), None for an instance no group
  knows (IMDS answers 404); localaws/metadata.py serves it.
- Health (SetInstanceHealth, https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceHealth.html):
  "Set to Unhealthy to have the instance be out of service. Amazon EC2 Auto Scaling terminates and replaces the
  unhealthy instance": the member leaves as a health replacement does (terminated through the hook, whatever its
  scale-in protection: protection "does not protect Auto Scaling instances from ... health check replacement",
  ec2-auto-scaling-instance-protection.html), its replacement from the pool. With ShouldRespectGracePeriod (the
  default true) a member still within the group's HealthCheckGracePeriod of entering InService keeps its health;
  Healthy changes nothing else. An instance no group has as a member (a pool instance, an unknown id) is AWS's
  ValidationError.
- EC2 instances, as the members and the emulated hosts (localaws/host.py) need them, where moto differs: StartInstances
  of a stopped instance sets its LaunchTime to that start ("the time that the instance was last launched",
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Instance.html; moto keeps the first launch's); each
  RebootInstances of a running instance is counted (`reboots`), since moto's changes nothing a caller can see, and
  one of an instance that is not running is left as it is (moto would set it running; AWS ignores a terminated one).
- Time: moto is synchronous, AWS is not. Every Auto Scaling or EC2 call (and `target_lifecycle_state`) first
  brings each group up to date with `Settings.clock`, as does `ticking()`, the background tick moto_server owns, so
  a timeout passes even when nothing calls. Tests inject the clock with `settings(clock=...)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState

from localaws.autoscaling_group import begin_leave, reconcile
from localaws.autoscaling_state import (
    LOCK,
    RESULTS,
    TARGET,
    TERMINATING,
    Leave,
    Lifecycle,
    LifecycleAction,
    Settings,
    Track,
    current,
    groups,
    model_of,
    now,
    reboots,
    settings,
)

__all__ = [
    "LOCK",
    "RESULTS",
    "TERMINATING",
    "Leave",
    "Lifecycle",
    "LifecycleAction",
    "Settings",
    "action_of",
    "find",
    "in_pool",
    "install",
    "interrupt",
    "lifecycle_token",
    "now",
    "reboots",
    "recommend_rebalance",
    "settings",
    "target_lifecycle_state",
    "tick",
    "ticking",
]
log = logging.getLogger("localaws.autoscaling")


def install() -> None:
    """Put this model into moto's Auto Scaling in this process (localaws/autoscaling_api.py); idempotent."""
    from localaws import autoscaling_api  # it imports this module

    autoscaling_api.install()


def tick() -> None:
    """Bring every group up to date with the clock."""
    with LOCK:
        for group in groups():
            reconcile(group)


@contextmanager
def ticking(interval_s: float = 1.0) -> Iterator[None]:
    """A background tick every `interval_s`, stopped (and joined) when the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                tick()
            except Exception:  # a reset racing the tick: the next one sees the new state
                log.debug("auto scaling tick failed", exc_info=True)

    thread = threading.Thread(target=loop, name="localaws-autoscaling-tick", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# -- lookups -----------------------------------------------------------------------------------------------------------
def find(instance_id: str) -> tuple[FakeAutoScalingGroup, InstanceState] | None:
    """The group and record of an instance in a group or its pool."""
    for group in groups():
        for s in [*group.instance_states, *model_of(group).warm]:
            if s.instance.id == instance_id:
                return group, s
    return None


def in_pool(group: FakeAutoScalingGroup, s: InstanceState) -> bool:
    return s in model_of(group).warm


def action_of(group: FakeAutoScalingGroup, hook: str, instance_id: str | None, token: str | None) -> InstanceState:
    """The instance whose action of `hook` the caller names (by id or token), or AWS's ValidationError."""
    for s in [*group.instance_states, *model_of(group).warm]:
        action = model_of(group).tracks.get(s.instance.id, Track(since=0.0)).actions.get(hook)
        if action is not None and (s.instance.id == instance_id or (token and action.token == token)):
            return s
    raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id or token}")


def target_lifecycle_state(instance_id: str) -> str | None:
    """What IMDS autoscaling/target-lifecycle-state answers for `instance_id` (None: not an Auto Scaling instance)."""
    with LOCK:
        tick()
        found = find(instance_id)
        if found is not None:
            state = str(found[1].lifecycle_state)
            return TARGET.get(state, state)
        for group in groups():
            if instance_id in model_of(group).gone:
                return model_of(group).gone[instance_id]
        return None


def lifecycle_token(instance_id: str, hook: str) -> str | None:
    """The LifecycleActionToken of `hook`'s pending action on `instance_id` (what the hook's notification carries)."""
    with LOCK:
        found = find(instance_id)
        if found is None:
            return None
        action = model_of(found[0]).tracks.get(instance_id, Track(since=0.0)).actions.get(hook)
        return action.token if action else None


# -- Spot --------------------------------------------------------------------------------------------------------------
def _spot_member(instance_id: str) -> tuple[FakeAutoScalingGroup, InstanceState]:
    found = find(instance_id)
    if found is None or found[1].instance.lifecycle != "spot":
        raise ValueError(f"{instance_id} is not a Spot instance of an Auto Scaling group")
    return found


def interrupt(instance_id: str) -> float:
    """EC2's two-minute Spot interruption notice for `instance_id`; returns when EC2 will reclaim it."""
    with LOCK:
        tick()
        group, s = _spot_member(instance_id)
        t = now()
        model_of(group).tracks.setdefault(instance_id, Track(since=t)).interrupted_at = t
        begin_leave(group, s, Leave.TERMINATE)
        reconcile(group)
        return t + current().interruption_notice_s


def recommend_rebalance(instance_id: str) -> bool:
    """An EC2 rebalance recommendation for `instance_id`; True if the group acts on it (CapacityRebalance)."""
    with LOCK:
        tick()
        group, s = _spot_member(instance_id)
        if not group.capacity_rebalance:
            return False
        model_of(group).tracks.setdefault(instance_id, Track(since=now())).at_risk = True
        reconcile(group)
        return True
