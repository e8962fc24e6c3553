"""Fleet mode: the adapter as a member of an Auto Scaling group in the local AWS (moto on 127.0.0.1, with the group
lifecycle localaws/autoscaling.py models), its instance id from its own metadata emulator (localaws/metadata.py).

Scale-in protection is on while a slot is busy - switched on before the first claim - and off when every slot is
idle, with a call only on a change; a busy instance is never the one a scale-in takes; the idle stop leaves through
the group and lands in the warm pool, stopped. The idle stop runs the shared checks over the whole task table, so
every test here leaves its tasks terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from core import contract as c
from core.store import TaskStore
from localaws import autoscaling as model
from localaws.metadata import MetadataServer
from localaws.server import free_port
from tests._adapter_support import (
    Gate,
    fleet_env,
    fleet_group,
    lifecycle_state,
    record_calls,
    running,
    submit,
    wait_for,
    worker_env,
)

# fixtures: one local AWS per module, its task table, a registry with the gate type
module_aws, aws, store, types = support.module_aws, support.aws, support.store, support.gate_types


def protected(aws: Any, instance_id: str) -> bool:
    found = aws.client("autoscaling").describe_auto_scaling_instances(InstanceIds=[instance_id])
    return bool(found["AutoScalingInstances"][0]["ProtectedFromScaleIn"])


def status(store: TaskStore, task_id: str) -> str | None:
    item = store.get(task_id)
    return item.status.value if item is not None else None


def test_protection_is_on_while_a_slot_is_busy_and_off_when_idle(
    aws: Any, store: TaskStore, types: Path, tmp_path: Path
) -> None:
    group = fleet_group(aws, 1)
    (me,) = group.instance_ids
    gate = Gate.at(tmp_path / "gate")
    calls: list[tuple[str, Any]] = []  # protection changes and task-table writes, in the order they were made
    with MetadataServer(me) as imds:
        imds.set_target_lifecycle_state("InService")
        fleet = fleet_env(group, imds.url, GPU_SLOTS="2", TASK_TYPES_FILE=str(types))
        worker = build(worker_env(aws, tmp_path / "work", **fleet))
        assert worker.membership is not None and worker.membership.instance_id == me
        worker.membership.autoscaling.meta.events.register(
            "provide-client-params.auto-scaling.SetInstanceProtection",
            lambda params, **_: calls.append(("protect", params["ProtectedFromScaleIn"])),
        )
        worker.store.table.meta.client.meta.events.register(
            "provide-client-params.dynamodb.UpdateItem", lambda params, **_: calls.append(("write", None))
        )
        first, second = (submit(aws, store, "gate", gate.params()) for _ in range(2))
        with running(worker):
            wait_for("both jobs to arrive", lambda: gate.arrived() == {first, second})
            assert protected(aws, me)
            # Off at the first turn (nothing held), on before the first claim: no scale-in can pick this instance
            # between the receive and the claim.
            assert calls[0] == ("protect", False) and calls[1] == ("protect", True) and calls[2] == ("write", None)
            store.cancel(first)
            wait_for("the cancel", lambda: status(store, first) == "CANCELLED")
            assert protected(aws, me)  # the other slot is still busy
            gate.open()
            wait_for("the other to succeed", lambda: status(store, second) == "SUCCEEDED")
            wait_for("protection off", lambda: not protected(aws, me))
    assert [on for what, on in calls if what == "protect"] == [False, True, False]  # a call only on a change


def test_a_busy_instance_is_never_chosen_for_scale_in(aws: Any, store: TaskStore, types: Path, tmp_path: Path) -> None:
    group = fleet_group(aws, 2)
    busy, idle = group.instance_ids
    gate = Gate.at(tmp_path / "gate")
    autoscaling = aws.client("autoscaling")
    with MetadataServer(busy, target_lifecycle_state=lambda: model.target_lifecycle_state(busy)) as imds:
        worker = build(worker_env(aws, tmp_path / "work", TASK_TYPES_FILE=str(types), **fleet_env(group, imds.url)))
        task_id = submit(aws, store, "gate", gate.params())
        with running(worker):
            wait_for("the job to arrive", lambda: gate.arrived() == {task_id})
            wait_for("its protection", lambda: protected(aws, busy))
            # The controller's backstop scale-in, all the way to 0: only the idle member goes.
            autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=0, HonorCooldown=False)
            wait_for("the idle member to leave", lambda: lifecycle_state(aws, idle) != "InService")
            assert lifecycle_state(aws, busy) == "InService" and status(store, task_id) == "RUNNING"
            gate.open()
            wait_for("the task to succeed", lambda: status(store, task_id) == "SUCCEEDED")
            # Idle now, its protection cleared: the scale-in that waited for it takes it.
            wait_for("the busy member to leave once idle", lambda: lifecycle_state(aws, busy) != "InService")
            wait_for("its adapter to see it leave", worker.departure.leaving.is_set)
    item = store.get(task_id)
    assert item is not None and item.attempts == 1  # never interrupted


def test_the_idle_stop_leaves_through_the_group_into_the_warm_pool(aws: Any, tmp_path: Path) -> None:
    group = fleet_group(aws, 2, warm_pool=True)
    me, other = group.instance_ids
    autoscaling = aws.client("autoscaling")
    autoscaling.set_instance_protection(
        InstanceIds=[other], AutoScalingGroupName=group.name, ProtectedFromScaleIn=True
    )  # the other member is busy
    with MetadataServer(me, target_lifecycle_state=lambda: model.target_lifecycle_state(me)) as imds:
        env = worker_env(aws, tmp_path / "work", **fleet_env(group, imds.url))
        worker = build({**env, "ADAPTER_POWEROFF": "1", "IDLE_WINDOW_SECONDS": "1"})
        assert worker.membership is not None
        lowered = record_calls(worker.membership.autoscaling, "SetDesiredCapacity")
        terminated = record_calls(worker.membership.autoscaling, "TerminateInstanceInAutoScalingGroup")
        with running(worker):
            wait_for("this instance back in the warm pool", lambda: str(lifecycle_state(aws, me)).startswith("Warmed:"))
            wait_for("its adapter to see it leave", worker.departure.leaving.is_set)
            assert "Warmed:" in worker.departure.reason
            worker.membership.leave()  # again, while leaving: nothing more is lowered
    assert lowered == [{"AutoScalingGroupName": group.name, "DesiredCapacity": 1, "HonorCooldown": False}]
    assert terminated == []  # never terminated: its disk is what makes the next start warm
    (described,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group.name])["AutoScalingGroups"]
    assert described["DesiredCapacity"] == 1
    assert lifecycle_state(aws, other) == "InService" and protected(aws, other)


def test_fleet_mode_without_metadata_is_a_setting_error(aws: Any, tmp_path: Path) -> None:
    group = fleet_group(aws, 1)
    env = worker_env(aws, tmp_path / "work", **fleet_env(group, f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(c.SettingError) as bad:
        build(env)
    assert bad.value.name == "INSTANCE_METADATA_URL" and "\n" not in str(bad.value)
