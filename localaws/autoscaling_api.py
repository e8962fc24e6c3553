"""The Auto Scaling API calls that reach localaws/autoscaling.py's model (its docstring says what is modelled), and
the two moto 5.2.5 lacks: `install()` patches moto's classes in this process, once.

- Every Auto Scaling and EC2 call first brings the groups up to date (`autoscaling.tick`), under the model's lock.
- SetDesiredCapacity: refused outside [MinSize, MaxSize] with AWS's ValidationError (moto accepts any value); the
  group then follows the model (warm pool first, unprotected members leave). HonorCooldown is accepted and has no
  effect: no cooldown is modelled (the controller sends HonorCooldown=False, as manual scaling defaults to).
- TerminateInstanceInAutoScalingGroup, SetInstanceProtection: as the model says (refused for pool instances and for
  instances not in the group, which moto ignores).
- PutWarmPool (refused with a mixed instances policy, and for a pool state other than Stopped), DescribeWarmPool
  (its Instances, where moto answers none), DeleteWarmPool (terminates the pool's instances, as DeleteWarmPool with
  ForceDelete does), DescribeAutoScalingInstances (the pool's instances too: their LifecycleState is Warmed:*).
- DeleteAutoScalingGroup terminates every instance at once (as ForceDelete does), rather than scaling in.
- UpdateAutoScalingGroup keeps the group's mixed instances policy when the call names none (moto drops it), and
  resizes the pool to a new MaxSize.
- EC2 TerminateInstances on a member or pool instance: the group forgets it and the model replaces it.
- SetInstanceHealth: as the model says (moto only stores the status, and fails on an instance of no group).
- EC2 StartInstances (LaunchTime) and RebootInstances (the reboot count): as the model says.
- CompleteLifecycleAction and RecordLifecycleActionHeartbeat (absent from moto): by InstanceId or
  LifecycleActionToken; no pending action of that hook for it is AWS's ValidationError "No active Lifecycle Action
  found with instance ID ..." (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CompleteLifecycleAction.html,
  API_RecordLifecycleActionHeartbeat.html).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import AutoScalingBackend, FakeAutoScalingGroup, InstanceState, TerminateInstanceActivity
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult, EmptyResult
from moto.core.utils import utcnow
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses import EC2Response

from localaws import autoscaling as model
from localaws.autoscaling_group import begin_leave, complete, forget, reconcile
from localaws.autoscaling_state import REBOOTS, model_of, now

_installed = False
R = TypeVar("R")
T = TypeVar("T")


def install() -> None:
    """Patch moto's Auto Scaling (and EC2's call dispatch) in this process; a second call does nothing."""
    global _installed
    with model.LOCK:
        if _installed:
            return
        AutoScalingResponse.call_action = _ticked(AutoScalingResponse.call_action)  # type: ignore[method-assign]
        EC2Response.call_action = _ticked(EC2Response.call_action)  # type: ignore[method-assign,assignment]
        for name in ("set_desired_capacity", "describe_warm_pool", "complete_lifecycle_action", "set_instance_health"):
            setattr(AutoScalingResponse, name, _RESPONSES[name])
        AutoScalingResponse.record_lifecycle_action_heartbeat = _record_heartbeat  # type: ignore[attr-defined]
        FakeAutoScalingGroup.set_desired_capacity = _group_set_desired_capacity  # type: ignore[method-assign]
        FakeAutoScalingGroup.update = _reconciled_update(FakeAutoScalingGroup.update)  # type: ignore[method-assign]
        for name, function in _BACKEND.items():
            setattr(AutoScalingBackend, name, function)
        InstanceBackend.start_instances = _started(InstanceBackend.start_instances)  # type: ignore[method-assign]
        InstanceBackend.reboot_instances = _counted(InstanceBackend.reboot_instances)  # type: ignore[method-assign]
        _installed = True


def _ticked(call: Callable[[R], T]) -> Callable[[R], T]:
    def call_action(self: R) -> T:
        with model.LOCK:
            model.tick()
            return call(self)

    return call_action


def _group(backend: AutoScalingBackend, name: str) -> FakeAutoScalingGroup:
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup '{name}' not found")
    return group


# -- the group's own method: every change of desired capacity goes through the model -----------------------------------
def _group_set_desired_capacity(self: FakeAutoScalingGroup, new_capacity: int | None) -> None:
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    reconcile(self)
    if self.name in self.autoscaling_backend.autoscaling_groups:  # as moto's own: its load balancers follow
        self.autoscaling_backend.update_attached_elbs(self.name)
        self.autoscaling_backend.update_attached_target_groups(self.name)


def _reconciled_update(update: Callable[..., None]) -> Callable[..., None]:
    def reconciled(self: FakeAutoScalingGroup, *args: Any, **kwargs: Any) -> None:
        kept = self.mixed_instances_policy
        update(self, *args, **kwargs)
        if kwargs.get("mixed_instances_policy") is None:  # AWS keeps what a call does not name; moto drops it
            self.mixed_instances_policy = kept
        reconcile(self)  # a new MaxSize resizes the pool even when the desired capacity stays

    return reconciled


# -- responses ---------------------------------------------------------------------------------------------------------
def _set_desired_capacity(self: AutoScalingResponse) -> ActionResult:
    name = self._get_param("AutoScalingGroupName")
    desired = self._get_int_param("DesiredCapacity")
    group = _group(self.autoscaling_backend, name)
    high, low = int(group.max_size or 0), int(group.min_size or 0)
    if not low <= desired <= high:
        where = f"above max value {high}" if desired > high else f"below min value {low}"
        raise ValidationError(f"New SetDesiredCapacity value {desired} is {where} for the AutoScalingGroup.")
    self.autoscaling_backend.set_desired_capacity(name, desired)
    return EmptyResult()


def _describe_warm_pool(self: AutoScalingResponse) -> ActionResult:
    name = self._get_param("AutoScalingGroupName")
    group = _group(self.autoscaling_backend, name)
    return ActionResult({"WarmPoolConfiguration": group.warm_pool, "Instances": list(model_of(group).warm)})


def _complete_lifecycle_action(self: AutoScalingResponse) -> ActionResult:
    result = self._get_param("LifecycleActionResult")
    if result not in model.RESULTS:
        raise ValidationError(f"LifecycleActionResult must be one of {', '.join(model.RESULTS)}, got {result!r}")
    group, s, hook = _named_action(self)
    complete(group, s, hook, result)
    reconcile(group)
    return EmptyResult()


def _set_instance_health(self: AutoScalingResponse) -> ActionResult:
    status = self._get_param("HealthStatus")
    if status not in ("Healthy", "Unhealthy"):
        raise ValidationError(f"Valid instance health states are: [Healthy, Unhealthy], got {status!r}")
    respect = self._get_param("ShouldRespectGracePeriod") in (None, True, "true", "True")
    instance_id = self._get_param("InstanceId")
    found = model.find(instance_id)
    if found is None or model.in_pool(*found):
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    group, s = found
    track = model_of(group).tracks.get(instance_id)
    in_service_for = now() - track.since if track is not None and str(s.lifecycle_state) == "InService" else 0.0
    if status == "Unhealthy" and respect and in_service_for < float(group.health_check_grace_period or 0):
        return EmptyResult()  # within the grace period, respected: the health check does not count yet
    s.health_status = status
    if status == "Unhealthy":
        begin_leave(group, s, model.Leave.TERMINATE)
        reconcile(group)
    return EmptyResult()


def _record_heartbeat(self: AutoScalingResponse) -> ActionResult:
    group, s, hook = _named_action(self)
    model_of(group).tracks[s.instance.id].actions[hook].heartbeat_at = now()
    return EmptyResult()


def _named_action(self: AutoScalingResponse) -> tuple[FakeAutoScalingGroup, InstanceState, str]:
    group = _group(self.autoscaling_backend, self._get_param("AutoScalingGroupName"))
    hook = self._get_param("LifecycleHookName")
    s = model.action_of(group, hook, self._get_param("InstanceId"), self._get_param("LifecycleActionToken"))
    return group, s, hook


_RESPONSES: dict[str, Callable[[AutoScalingResponse], ActionResult]] = {
    "set_desired_capacity": _set_desired_capacity,
    "describe_warm_pool": _describe_warm_pool,
    "complete_lifecycle_action": _complete_lifecycle_action,
    "set_instance_health": _set_instance_health,
}


# -- EC2 instances -----------------------------------------------------------------------------------------------------
def _started(start: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def start_instances(self: InstanceBackend, instance_ids: list[str]) -> list[Any]:
        started = list(start(self, instance_ids))
        for instance, previous in started:
            if previous.name == "stopped":  # a start, not a no-op on a running one
                instance.launch_time = utcnow()
        return started

    return start_instances


def _counted(reboot: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def reboot_instances(self: InstanceBackend, instance_ids: list[str]) -> list[Any]:
        running = [i.id for i in self.get_multi_instances_by_id(instance_ids) if i.state == "running"]
        rebooted = list(reboot(self, running)) if running else []
        with model.LOCK:
            for instance in rebooted:
                REBOOTS[instance.id] = REBOOTS.get(instance.id, 0) + 1
        return rebooted

    return reboot_instances


# -- backend methods ---------------------------------------------------------------------------------------------------
def _terminate_instance(
    self: AutoScalingBackend, instance_id: str, should_decrement: bool
) -> TerminateInstanceActivity:
    found = model.find(instance_id)
    if found is None:
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    group, s = found
    if model.in_pool(group, s):
        raise ValidationError("This operation cannot be called on instances in a warm pool.")
    original = int(group.desired_capacity or 0)
    if should_decrement:
        if original - 1 < int(group.min_size or 0):
            raise ValidationError(
                f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without replacement "
                "will violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false "
                "or lower group's min size."
            )
        group.desired_capacity = original - 1
    activity = TerminateInstanceActivity(s.instance, original)
    begin_leave(group, s, model.Leave.TERMINATE)
    reconcile(group)
    return activity


def _set_instance_protection(
    self: AutoScalingBackend, group_name: str, instance_ids: list[str], protected_from_scale_in: bool | None
) -> None:
    group = _group(self, group_name)
    members = {s.instance.id: s for s in group.instance_states}
    pooled = {s.instance.id for s in model_of(group).warm}
    for instance_id in instance_ids:
        if instance_id in pooled:
            raise ValidationError("This operation cannot be called on instances in a warm pool.")
        if instance_id not in members:
            raise ValidationError(f"The instance {instance_id} is not part of Auto Scaling group {group_name}.")
    for instance_id in instance_ids:
        members[instance_id].protected_from_scale_in = bool(protected_from_scale_in)
    reconcile(group)  # a cleared protection lets a pending scale-in happen now


_original_describe_instances = AutoScalingBackend.describe_auto_scaling_instances
_original_put_warm_pool = AutoScalingBackend.put_warm_pool
_original_delete_warm_pool = AutoScalingBackend.delete_warm_pool
_original_delete_group = AutoScalingBackend.delete_auto_scaling_group


def _describe_auto_scaling_instances(self: AutoScalingBackend, instance_ids: list[str]) -> list[InstanceState]:
    pooled = [
        s
        for group in self.autoscaling_groups.values()
        for s in model_of(group).warm
        if not instance_ids or s.instance.id in instance_ids
    ]
    return [*_original_describe_instances(self, instance_ids), *pooled]


def _put_warm_pool(
    self: AutoScalingBackend,
    group_name: str,
    max_group_prepared_capacity: int | None,
    min_size: int | None,
    pool_state: str | None,
    instance_reuse_policy: dict[str, bool] | None,
) -> None:
    group = _group(self, group_name)
    if group.mixed_instances_policy:
        raise ValidationError(
            "You cannot add a warm pool to an Auto Scaling group that has a mixed instances policy or a launch "
            "template or launch configuration that requests Spot Instances."
        )
    if pool_state not in (None, "Stopped"):
        raise ValidationError(f"local AWS: warm pool state {pool_state} is not modelled (Stopped only)")
    _original_put_warm_pool(self, group_name, max_group_prepared_capacity, min_size, pool_state, instance_reuse_policy)
    reconcile(group)


def _terminate_now(group: FakeAutoScalingGroup, states: list[InstanceState], final: str) -> None:
    ids = [s.instance.id for s in states if s.instance.state != "terminated"]
    if ids:
        group.ec2_backend.terminate_instances(ids)
    for s in states:
        forget(group, s.instance.id, final)


def _delete_warm_pool(self: AutoScalingBackend, group_name: str) -> None:
    group = _group(self, group_name)
    _terminate_now(group, list(model_of(group).warm), "Warmed:Terminated")
    _original_delete_warm_pool(self, group_name)


def _delete_auto_scaling_group(self: AutoScalingBackend, group_name: str) -> None:
    group = _group(self, group_name)
    _terminate_now(group, list(model_of(group).warm), "Warmed:Terminated")
    _terminate_now(group, list(group.instance_states), "Terminated")
    _original_delete_group(self, group_name)


def _notify_terminate_instances(self: AutoScalingBackend, instance_ids: list[str]) -> None:
    for group in list(self.autoscaling_groups.values()):
        m = model_of(group)
        pooled = {s.instance.id for s in m.warm}
        touched = False
        for s in [*group.instance_states, *m.warm]:
            if s.instance.id in instance_ids:
                forget(group, s.instance.id, "Warmed:Terminated" if s.instance.id in pooled else "Terminated")
                touched = True
        if touched:
            reconcile(group)


_BACKEND: dict[str, Callable[..., Any]] = {
    "terminate_instance": _terminate_instance,
    "set_instance_protection": _set_instance_protection,
    "describe_auto_scaling_instances": _describe_auto_scaling_instances,
    "put_warm_pool": _put_warm_pool,
    "delete_warm_pool": _delete_warm_pool,
    "delete_auto_scaling_group": _delete_auto_scaling_group,
    "notify_terminate_instances": _notify_terminate_instances,
}
