"""Fleet mode (GPU_FLEET_NAME set): this instance as a member of the GPU fleet's Auto Scaling group.

- Scale-in protection while any slot holds a task, off when every slot is idle: AWS's pattern for queue workers
  ("When the instance has no more jobs to do, it can turn off protection. The instance can continue polling for new
  jobs and re-enable protection when a new job is assigned",
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/gracefully-handle-instance-termination.html). Auto Scaling
  never chooses a protected instance for scale-in; lowering the desired capacity below the protected members only
  defers their scale-in until their protection is cleared
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html). The call is
  made only when the wanted state differs from the last one AWS accepted (the same page warns that fleets toggling
  it constantly get throttled); a failed call is logged and made again at the next chance, never fatal.
- Leaving when idle (the AutoStop's action in fleet mode): clear the protection, then lower the group's desired
  capacity by one (SetDesiredCapacity, HonorCooldown=False). That is a scale-in, and with the warm pool's instance
  reuse policy a scale-in returns the instance to the warm pool, stopped with its disk, instead of terminating it
  ("If you want to return instances to the warm pool instead, you can specify an instance reuse policy",
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-warm-pools.html). It is not
  TerminateInstanceInAutoScalingGroup: AWS documents that call as terminating the instance ("When an instance is
  terminated, the instance status changes to terminated. You can't connect to or start an instance after you've
  terminated it", https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_TerminateInstanceInAutoScalingGroup.html),
  which would throw away the disk a warm start keeps. Nor a bare poweroff: the group would see a stopped member as
  unhealthy and replace it (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html).
  Scale-in chooses among unprotected members, so the one that leaves is an idle one: this instance unless another
  idle member is picked first, in which case this one is still InService at the AutoStop's next check and lowers it
  again (`leave` does nothing while this instance is not InService: its own departure is under way).
- Leaving service (`Departure`, fed by adapter/metadata.py's watch): a Spot interruption notice, a rebalance
  recommendation or a target lifecycle state other than InService stops the receives and has every slot hand its
  task back (adapter/worker.py). When the target state says the group is taking the instance away (Terminated, or
  Warmed:* on a return to the warm pool, which waits on the same EC2_INSTANCE_TERMINATING hook), the termination
  lifecycle hook is completed with CONTINUE for this instance once every slot is idle
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/completing-lifecycle-hooks.html), and its heartbeat is
  recorded (RecordLifecycleActionHeartbeat) while a hand-back runs past HOOK_HEARTBEAT_S. A Spot notice alone
  completes nothing: EC2 interrupts the instance whether or not a hook waits, and the group's own termination of
  it, if any, shows up as the target state Terminated.

The IAM this needs on the group: autoscaling:SetInstanceProtection, SetDesiredCapacity, CompleteLifecycleAction,
RecordLifecycleActionHeartbeat; on "*": DescribeAutoScalingInstances, DescribeAutoScalingGroups (Describe calls
take no resource).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from core import logs

from .every import Every
from .metadata import Reading
from .slots import Slots

log = logging.getLogger("adapter.fleet")
NO_ACTION = "No active Lifecycle Action"  # API_CompleteLifecycleAction's ValidationError when nothing waits
# Half the shortest HeartbeatTimeout a lifecycle hook may have (30 s, API_PutLifecycleHook), so the hook cannot time
# out while a hand-back runs, whatever its timeout. With the defaults a hand-back (each slot's job gets SIGTERM, then
# SIGKILL after STOP_GRACE_SECONDS = 20, all slots at once, then four AWS calls per task) only passes it when a job
# ignores SIGTERM.
HOOK_HEARTBEAT_S = 15.0
# CompleteLifecycleAction before the hook's action exists is refused ("No active Lifecycle Action"): asked again each
# watch interval this many times, then left to the hook's own timeout (its default result, CONTINUE, lets it go).
HOOK_TRIES = 24


class HookOutcome(StrEnum):
    COMPLETED = "COMPLETED"
    NOT_PENDING = "NOT_PENDING"  # no action of the hook waits for this instance (yet, or any more)
    FAILED = "FAILED"


class Membership:
    """This instance (`instance_id`, from the metadata) in the group `group`; `hook_name`: its termination hook."""

    def __init__(self, autoscaling: Any, *, group: str, instance_id: str, hook_name: str | None = None) -> None:
        self.autoscaling = autoscaling
        self.group = group
        self.instance_id = instance_id
        self.hook_name = hook_name
        self.protected: bool | None = None  # what AWS last accepted; None: not known (at start, after a failure)
        self._lock = threading.Lock()
        self._failing = False

    def protect(self, on: bool) -> None:
        """Scale-in protection on or off, calling AWS only when that changes what it last accepted."""
        with self._lock:
            if self.protected is on:
                return
            try:
                self.autoscaling.set_instance_protection(
                    InstanceIds=[self.instance_id], AutoScalingGroupName=self.group, ProtectedFromScaleIn=on
                )
            except Exception as err:  # throttled, or the instance is leaving: the next turn tries again
                self.protected = None
                if not self._failing:
                    why = f"{type(err).__name__}: {err}"
                    logs.event(log, "protection_failed", logging.WARNING, wanted=on, error=why)
                self._failing = True
                return
            self.protected, self._failing = on, False
            logs.event(log, "scale_in_protection", protected=on)

    def lifecycle_state(self) -> str | None:
        """This instance's LifecycleState in the group (InService, Terminating:Wait, Warmed:Stopped, ...); None when
        the group does not know it."""
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[self.instance_id])
        for member in found.get("AutoScalingInstances", []):
            if member.get("InstanceId") == self.instance_id:
                return str(member.get("LifecycleState"))
        return None

    def leave(self) -> None:
        """Leave through the group, back to its warm pool (see the module docstring). Raises when a call fails, so
        that the AutoStop reports it and tries again later."""
        state = self.lifecycle_state()
        if state is None:
            raise LookupError(f"{self.instance_id} is not a member of {self.group}")
        if state != "InService":
            logs.event(log, "leave_under_way", lifecycle_state=state)
            return
        self.protect(False)
        if self.protected is not False:
            raise RuntimeError("scale-in protection could not be cleared")
        (group,) = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])[
            "AutoScalingGroups"
        ]
        desired, floor = int(group["DesiredCapacity"]), int(group["MinSize"])
        if desired <= floor:
            logs.event(log, "leave_at_min_size", desired=desired, min_size=floor)
            return
        # Manual scaling does not honour cooldowns by default; said explicitly, as the controller does.
        self.autoscaling.set_desired_capacity(
            AutoScalingGroupName=self.group, DesiredCapacity=desired - 1, HonorCooldown=False
        )
        logs.event(log, "left_through_group", desired=desired - 1)

    def complete_hook(self) -> HookOutcome:
        """CompleteLifecycleAction(CONTINUE) of the termination hook for this instance."""
        return self._hook_call("complete_lifecycle_action", LifecycleActionResult="CONTINUE")

    def heartbeat_hook(self) -> HookOutcome:
        """RecordLifecycleActionHeartbeat: the hook's timeout starts again."""
        return self._hook_call("record_lifecycle_action_heartbeat")

    def _hook_call(self, operation: str, **extra: str) -> HookOutcome:
        if not self.hook_name:
            return HookOutcome.NOT_PENDING
        try:
            getattr(self.autoscaling, operation)(
                LifecycleHookName=self.hook_name,
                AutoScalingGroupName=self.group,
                InstanceId=self.instance_id,
                **extra,
            )
        except Exception as err:
            if NO_ACTION in str(err):
                return HookOutcome.NOT_PENDING
            why = f"{type(err).__name__}: {err}"
            logs.event(log, "lifecycle_hook_failed", logging.WARNING, call=operation, error=why)
            return HookOutcome.FAILED
        logs.event(log, "lifecycle_hook", call=operation, hook=self.hook_name)
        return HookOutcome.COMPLETED


class Departure:
    """The instance leaving service, as the metadata watch reports it (`note`, from the watch's thread), and what
    the loop does about it (`turn`, from the loop's thread; see adapter/worker.py's docstring)."""

    def __init__(
        self, membership: Membership | None, *, watch_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.membership = membership
        self.watch_s = watch_s
        self._clock = clock
        self.leaving = threading.Event()  # shared with every attempt's Control: set, each slot hands its task back
        self.reason = ""  # why, in words: the hand-back's error text on the task
        self._hook_due = False  # the group is taking the instance away and a termination hook may wait for us
        self._hook_done = False
        self._hook_tries = 0
        self._beat = Every(HOOK_HEARTBEAT_S, clock=clock)  # the hook's heartbeat while slots hand back

    def note(self, reading: Reading) -> None:
        why = reading.leaving()
        if why is None:
            if self.leaving.is_set():
                logs.event(log, "back_in_service", target_state=reading.target_state)
                self.leaving.clear()
                self._hook_due = self._hook_done = False
                self._hook_tries = 0
            return
        if not self.leaving.is_set():
            self.reason = why
            self._beat = Every(HOOK_HEARTBEAT_S, clock=self._clock, wait_first=True)
            self.leaving.set()
            logs.event(log, "leaving_service", logging.WARNING, reason=why)
        hook = self.membership is not None and self.membership.hook_name
        if reading.removed_by_group and hook and not self._hook_done:
            self._hook_due = True

    def turn(self, slots: Slots, stopping: threading.Event) -> None:
        """One loop turn while leaving service: no receive. While slots still hand back, wait for them (recording
        the hook's heartbeat past HOOK_HEARTBEAT_S); then complete the hook if one may wait; then idle one watch
        interval."""
        membership = self.membership
        if slots.busy():
            if self._hook_due and membership is not None and self._beat.due():
                membership.heartbeat_hook()
            slots.wait_idle(1.0)
            return
        if self._hook_due and membership is not None:
            outcome = membership.complete_hook()
            self._hook_tries += 1
            if outcome is HookOutcome.COMPLETED or self._hook_tries >= HOOK_TRIES:
                self._hook_due, self._hook_done = False, True
                if outcome is not HookOutcome.COMPLETED:
                    logs.event(log, "lifecycle_hook_left_to_its_timeout", logging.WARNING, outcome=outcome.value)
        stopping.wait(self.watch_s)
