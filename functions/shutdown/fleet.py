"""The controller in fleet mode (GPU_FLEET_NAME set): the GPU fleet's desired capacity from the backlog.

observe (queue + table, as in the other modes) and read the group (core.observe.read_fleet) -> core.fleet.decide_fleet
-> before a SCALE_IN, read both again and keep only what the fresh read agrees to (core.fleet.confirm_scale_in) ->
SetDesiredCapacity. AWS owns which instance starts or leaves: a raised desired capacity takes stopped instances from
the warm pool first, a lowered one picks unprotected instances only (busy adapters hold scale-in protection), and
returns them to the pool when the pool's reuse policy says so. Logs exactly one JSON line per run (event
gpu_idle_decision) with the inputs and the decision, after its metric lines, as the other modes do; with
HOSTS_TABLE_NAME set, the hosts upkeep (functions/shutdown/upkeep.py) runs before the decision, a stuck member being
replaced through SetInstanceHealth (functions/shutdown/recovery.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from botocore.exceptions import ClientError

from core.fleet import IN_SERVICE, PENDING_STATES, Fleet, FleetAction, FleetDecision, confirm_scale_in, decide_fleet
from core.idle import Observation
from core.instances import read_instances
from core.observe import Sources, observe, read_fleet
from core.store import TaskStore
from core.tasks import TaskRecord

from .record import logged, new_record
from .recovery import RunningRead, read_running
from .settings import ShutdownSettings
from .telemetry import RunCounts, Write, emit_run, overdue, recoveries, type_timeouts
from .upkeep import Tended, tend

# SetDesiredCapacity's refusals that mean "not now": reported, never raised; the next scheduled run tries again.
# https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html (Errors)
BENIGN_ERRORS = frozenset({"ScalingActivityInProgress", "ResourceContention"})


def set_desired(autoscaling: Any, fleet: Fleet, decision: FleetDecision) -> list[dict[str, Any]]:
    """Apply the decision's desired capacity (nothing for NONE, or when it is already the group's).

    How AWS carries it out (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html):
    - raised: "Whenever your application needs to scale out, the Auto Scaling group can draw on the warm pool to meet
      its new desired capacity" (API_PutWarmPool.html): stopped pool instances are started, with their disks;
      only an empty pool means fresh launches (ec2-auto-scaling-warm-pools.html, Limitations).
    - lowered: "the Auto Scaling group uses its termination policy to determine which instances to terminate", and
      never picks an instance protected from scale in; "If all instances in an Auto Scaling group are protected
      from scale in, and a scale in event occurs, its desired capacity is decremented. However, the Auto Scaling
      group can't terminate the required number of instances until their instance scale in protection settings
      are disabled" (ec2-auto-scaling-instance-protection.html). With the warm pool's ReuseOnScaleIn the chosen
      instances return to the pool stopped instead of being terminated (API_InstanceReusePolicy.html).
    HonorCooldown=False: act now; manual scaling does not honor the cooldown by default anyway (same page).
    """
    if decision.action == FleetAction.NONE or decision.desired == fleet.desired:
        return []
    try:
        autoscaling.set_desired_capacity(
            AutoScalingGroupName=fleet.name, DesiredCapacity=decision.desired, HonorCooldown=False
        )
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        if code not in BENIGN_ERRORS:
            raise
        return [{"fleet": fleet.name, "error": code, "note": "left for the next scheduled run"}]
    return [{"fleet": fleet.name, "from": fleet.desired, "to": decision.desired}]


def run_fleet(
    config: ShutdownSettings,
    src: Sources,
    *,
    clock: Callable[[], float],
    trigger: str | None = None,
    cause: Mapping[str, Any] | None = None,
    tasks: Callable[[], TaskStore] | None = None,
    metrics: Write | None = None,
) -> dict[str, Any]:
    """observe + read the group -> (hosts upkeep) -> decide_fleet -> (re-read before a SCALE_IN) ->
    SetDesiredCapacity -> metrics; returns the logged record."""
    assert config.fleet_name is not None, "run_fleet needs fleet mode (GPU_FLEET_NAME)"
    policy = config.policy
    record = new_record(policy, trigger=trigger, cause=cause, fleet_name=config.fleet_name, slots=config.slots)
    with logged(record):
        obs = observe(src, clock(), policy)
        fleet = read_fleet(src.autoscaling, src.ec2, config.fleet_name)
        record["observation"], record["fleet"] = asdict(obs), asdict(fleet)
        running = read_running(src)
        tended = _upkeep(config, src, obs, fleet, running, record, tasks=tasks, clock=clock)
        decision = decide_fleet(obs, policy, fleet, slots=config.slots)
        record["first_decision"] = decision.to_log()
        if decision.action == FleetAction.SCALE_IN:
            # A task may have arrived, or an adapter taken one, while we looked: lower only if a fresh read agrees.
            obs = observe(src, clock(), policy)
            fleet = read_fleet(src.autoscaling, src.ec2, config.fleet_name)
            record["recheck"] = {"observation": asdict(obs), "fleet": asdict(fleet)}
            decision = confirm_scale_in(decision, decide_fleet(obs, policy, fleet, slots=config.slots))
        record["outcome"] = set_desired(src.autoscaling, fleet, decision)
        record["decision"] = decision.to_log()
        _publish(config, record, running.tasks, tended, write=metrics)
    return record


def _upkeep(
    config: ShutdownSettings,
    src: Sources,
    obs: Observation,
    fleet: Fleet,
    running: RunningRead,
    record: dict[str, Any],
    *,
    tasks: Callable[[], TaskStore] | None,
    clock: Callable[[], float],
) -> Tended:
    """The hosts upkeep (functions/shutdown/upkeep.py) when HOSTS_TABLE_NAME is set. The EC2 states of the members
    and the pool (one DescribeInstances): every running one is billed, pool instances preparing included; the
    InService members are the ones whose adapters are judged. A stuck member is replaced by the group, not
    quarantined: it is terminated, never started again."""
    if config.hosts_table_name is None:
        return Tended()
    seen = read_instances(src.ec2, [m.instance_id for m in (*fleet.members, *fleet.warm)])
    serving = {m.instance_id for m in fleet.members if m.in_service}
    judged = [i for i in seen if i.instance_id in serving]
    return tend(config, src, obs, record, seen=seen, judged=judged, running=running, tasks=tasks, clock=clock)


def _publish(
    config: ShutdownSettings,
    record: dict[str, Any],
    running: list[TaskRecord],
    tended: Tended,
    *,
    write: Write | None,
) -> None:
    """The run's metric lines (functions/shutdown/telemetry.py): starts and stops are the desired capacity's change."""
    obs, fleet = record["observation"], record["fleet"]
    moved = [o["to"] - o["from"] for o in record["outcome"] if "to" in o]
    up = sum(1 for m in fleet["members"] if m["lifecycle_state"] in (IN_SERVICE, *PENDING_STATES))
    counts = RunCounts(
        up=up,
        waiting=obs["visible"] + obs["delayed"],
        starts=sum(d for d in moved if d > 0),
        stops=-sum(d for d in moved if d < 0),
        overdue=overdue(running, now=obs["now"], timeouts=type_timeouts()),
        recoveries=recoveries(tended.done),
    )
    emit_run(config.metrics_namespace, counts, write=write)
