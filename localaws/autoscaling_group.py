"""One group's evaluation in localaws/autoscaling.py's model (its docstring says what is modelled and why): the
timers (Pending, pool preparation, hook timeouts, Spot, health), capacity against the desired capacity, the pool's
size, launches, and leaving through the terminating hooks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState

from localaws.autoscaling_state import (
    CAPACITY,
    LOCK,
    POOLED,
    TERMINATING,
    GroupModel,
    Leave,
    Lifecycle,
    LifecycleAction,
    Track,
    current,
    model_of,
    now,
)


def reconcile(group: FakeAutoScalingGroup) -> None:
    """Timers first (Pending, pool preparation, hook timeouts, Spot), then capacity, then the pool's size."""
    with LOCK:
        m, t = model_of(group), now()
        _advance(group, m, t)
        _fit_capacity(group, m)
        _fit_pool(group, m)


def _state(s: InstanceState) -> str:
    return str(s.lifecycle_state)


def _track(m: GroupModel, s: InstanceState) -> Track:
    return m.tracks.setdefault(s.instance.id, Track(since=now()))


def _enter(m: GroupModel, s: InstanceState, state: Lifecycle) -> None:
    s.lifecycle_state = state.value
    _track(m, s).since = now()


def _advance(group: FakeAutoScalingGroup, m: GroupModel, t: float) -> None:
    cfg = current()
    for s in list(group.instance_states):
        track = _track(m, s)
        if _state(s) == Lifecycle.PENDING and t - track.since >= cfg.pending_s:
            _enter(m, s, Lifecycle.IN_SERVICE)
        grace = float(group.health_check_grace_period or 0)
        in_service_for = t - track.since if _state(s) == Lifecycle.IN_SERVICE else -1.0
        if in_service_for >= grace and s.instance.state in ("stopped", "stopping"):
            s.health_status = "Unhealthy"  # EC2 status other than running, past the grace period: replaced
            begin_leave(group, s, Leave.TERMINATE)
        if track.interrupted_at is not None and t - track.interrupted_at >= cfg.interruption_notice_s:
            _terminate(group, m, s)  # EC2 reclaims the Spot instance, hook or not
    for s in list(m.warm):
        if _state(s) == Lifecycle.WARMED_PENDING and t - _track(m, s).since >= cfg.warm_prepare_s:
            s.instance.stop()
            _enter(m, s, Lifecycle.WARMED_STOPPED)
    for s in [*group.instance_states, *m.warm]:
        track = _track(m, s)
        for action in list(track.actions.values()):
            if action.hook in track.actions and t >= action.deadline:  # an ABANDON may have ended the others
                complete(group, s, action.hook, action.default_result)
    in_service = sum(1 for s in group.instance_states if _state(s) == Lifecycle.IN_SERVICE and not _track(m, s).at_risk)
    if in_service >= (group.desired_capacity or 0):  # the replacements are in service: the at-risk ones leave
        for s in [s for s in group.instance_states if _track(m, s).at_risk and _track(m, s).leave is None]:
            begin_leave(group, s, Leave.TERMINATE)


def _capacity(group: FakeAutoScalingGroup, m: GroupModel) -> list[InstanceState]:
    return [s for s in group.instance_states if _state(s) in CAPACITY and not _track(m, s).at_risk]


def _fit_capacity(group: FakeAutoScalingGroup, m: GroupModel) -> None:
    members = _capacity(group, m)
    desired = group.desired_capacity or 0
    if len(members) < desired:
        _scale_out(group, m, desired - len(members))
    elif len(members) > desired:
        candidates = [s for s in members if not s.protected_from_scale_in]
        candidates.sort(key=lambda s: _state(s) != Lifecycle.IN_SERVICE)  # stable: oldest first within each
        pool = getattr(group, "warm_pool", None)  # unset while moto's __init__ runs
        reuse = pool is not None and _reuse_on_scale_in(pool.instance_reuse_policy)
        for s in candidates[: len(members) - desired]:
            begin_leave(group, s, Leave.POOL if reuse else Leave.TERMINATE)


def _reuse_on_scale_in(policy: Any) -> bool:
    raw = (policy or {}).get("ReuseOnScaleIn", False)
    return raw is True or str(raw).lower() == "true"


def _scale_out(group: FakeAutoScalingGroup, m: GroupModel, count: int) -> None:
    ready = [s for s in m.warm if _state(s) == Lifecycle.WARMED_STOPPED][:count]
    for s in ready:
        m.warm.remove(s)
        s.instance.start()
        s.instance.launch_time = datetime.fromtimestamp(now(), UTC).replace(tzinfo=None)  # moto's naive UTC
        s.protected_from_scale_in = group.new_instances_protected_from_scale_in
        s.health_status = "Healthy"
        group.instance_states.append(s)
        _enter(m, s, Lifecycle.PENDING)
    if count > len(ready):
        for s in launch(group, count - len(ready)):
            _enter(m, s, Lifecycle.PENDING)


def _pool_target(group: FakeAutoScalingGroup) -> int:
    """MaxGroupPreparedCapacity (default MaxSize) is "the maximum number of instances that are allowed to be in the
    warm pool or in any state except Terminated for the Auto Scaling group" (API_PutWarmPool.html): the pool holds
    what the group's desired capacity, or its members if more stay (protected ones), leave of it; MinSize at least."""
    pool = getattr(group, "warm_pool", None)
    if pool is None:
        return 0
    prepared = pool.max_group_prepared_capacity
    ceiling = int(prepared) if prepared not in (None, -1, "-1") else int(group.max_size or 0)
    occupied = max(int(group.desired_capacity or 0), len(group.instance_states))
    return max(int(pool.min_size or 0), ceiling - occupied)


def _fit_pool(group: FakeAutoScalingGroup, m: GroupModel) -> None:
    pooled = [s for s in m.warm if _state(s) in POOLED]
    target = _pool_target(group)
    if len(pooled) < target:
        for s in launch(group, target - len(pooled)):
            group.instance_states.remove(s)
            m.warm.append(s)
            _enter(m, s, Lifecycle.WARMED_PENDING)
    elif len(pooled) > target:
        stopped = [s for s in pooled if _state(s) == Lifecycle.WARMED_STOPPED]
        for s in stopped[::-1][: len(pooled) - target]:
            begin_leave(group, s, Leave.TERMINATE)


def launch(group: FakeAutoScalingGroup, count: int) -> list[InstanceState]:
    """`count` new members from the group's template (moto's launcher: propagated tags, subnet, template), with the
    template's instance profile (moto's RunInstances ignores it) and, for an all-Spot mixed policy, as Spot of the
    first override's type."""
    before = {id(s) for s in group.instance_states}
    group.replace_autoscaling_group_instances(count, group.get_propagated_tags())
    made = [s for s in group.instance_states if id(s) not in before]
    backend = group.ec2_backend
    template = group.ec2_launch_template
    profile = None
    if template is not None:
        data = template.get_version(group.launch_template_version).data
        profile = (data.get("IamInstanceProfile") or {}).get("Name")
    policy = group.mixed_instances_policy or {}
    overrides = (policy.get("LaunchTemplate") or {}).get("Overrides") or []
    for s in made:
        if profile:
            backend.associate_iam_instance_profile(s.instance.id, iam_instance_profile_name=profile)
        if policy:
            s.instance.lifecycle = "spot"
            if overrides:
                s.instance.instance_type = s.instance_type = overrides[0]["InstanceType"]
        s.lifecycle_state = Lifecycle.PENDING.value
    return made


# -- leaving, and the terminating hook ---------------------------------------------------------------------------------
def _hooks(group: FakeAutoScalingGroup) -> list[Any]:
    hooks = group.autoscaling_backend.describe_lifecycle_hooks(group.name)
    return [h for h in hooks if h.lifecycle_transition == TERMINATING]


def begin_leave(group: FakeAutoScalingGroup, s: InstanceState, leave: Leave) -> None:
    """Start `s` on its way out: to the pool (stopped) or terminated, after the terminating hooks."""
    m = model_of(group)
    track = _track(m, s)
    if track.leave is not None:
        return
    from_pool = s in m.warm
    track.leave = leave
    if leave is Leave.POOL and not from_pool:
        group.instance_states.remove(s)
        m.warm.append(s)
    t = now()
    track.actions = {
        h.name: LifecycleAction(h.name, str(uuid.uuid4()), t, t, float(h.heartbeat_timeout), h.default_result)
        for h in _hooks(group)
    }
    if not track.actions:
        _proceed(group, m, s)
    elif leave is Leave.POOL:
        _enter(m, s, Lifecycle.WARMED_PENDING_WAIT)
    else:
        _enter(m, s, Lifecycle.WARMED_TERMINATING_WAIT if from_pool else Lifecycle.TERMINATING_WAIT)


def complete(group: FakeAutoScalingGroup, s: InstanceState, hook: str, result: str) -> None:
    """One hook's action ends with `result`; ABANDON ends the instance's other actions too. Once none is left the
    instance proceeds to where it was going."""
    m = model_of(group)
    track = _track(m, s)
    if result == "ABANDON":
        track.actions.clear()
    else:
        track.actions.pop(hook, None)
    if not track.actions:
        _proceed(group, m, s)


def _proceed(group: FakeAutoScalingGroup, m: GroupModel, s: InstanceState) -> None:
    track = _track(m, s)
    if track.leave is Leave.POOL:
        s.instance.stop()
        track.leave = None
        _enter(m, s, Lifecycle.WARMED_STOPPED)
    else:
        _terminate(group, m, s)


def _terminate(group: FakeAutoScalingGroup, m: GroupModel, s: InstanceState) -> None:
    from_pool = s in m.warm
    if s.instance.state != "terminated":
        group.ec2_backend.terminate_instances([s.instance.id])
    forget(group, s.instance.id, "Warmed:Terminated" if from_pool else "Terminated")


def forget(group: FakeAutoScalingGroup, instance_id: str, final: str) -> None:
    """Drop an instance that is gone (terminated by us or by EC2 TerminateInstances)."""
    m = model_of(group)
    group.instance_states = [s for s in group.instance_states if s.instance.id != instance_id]
    m.warm = [s for s in m.warm if s.instance.id != instance_id]
    m.tracks.pop(instance_id, None)
    m.gone[instance_id] = final
