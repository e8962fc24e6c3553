"""The issue's burst proof end to end, on the synthesized `local-fleet` (4 instances of 2 GPUs, its warm pool
prepared stopped): 10 tasks submitted, one controller run wakes 4 warm instances (not 5, not 10), and the 4 real
workers, 2 slots each, run 8 tasks at once while 2 wait; every busy member holds its scale-in protection. Jobs are
gate jobs (tests/_adapter_support.py): "at once" is shown by order (8 arrived before the gate opened), never a clock.
"""

from __future__ import annotations

import urllib.request
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import localaws
from adapter.__main__ import build
from core.instances import InstanceState
from core.store import TaskStore
from localaws import autoscaling
from localaws.lambdas import LocalController
from localaws.metadata import MetadataServer
from orchestrator.gpu import GpuStates
from tests._adapter_support import GATE_TYPE, Gate, registry_with, running, submit, wait_for, worker_env

TASKS, INSTANCES, SLOTS = 10, 4, 2


def members(asg: Any, name: str) -> list[dict[str, Any]]:
    return list(asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"])


def test_a_burst_of_ten_wakes_four_instances_of_two_gpus_and_runs_eight_at_once(
    moto_endpoint: str, synthesized: Any, tmp_path: Path
) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    local = localaws.build(synthesized("local-fleet"), moto_endpoint)
    asg = local.client("autoscaling")
    store = TaskStore(local.resource("dynamodb").Table(local.table_name), status_index=local.status_index)
    types = registry_with(tmp_path / "types.json", GATE_TYPE)
    gate = Gate.at(tmp_path / "gate")
    tasks = [submit(local, store, "gate", gate.params()) for _ in range(TASKS)]

    with LocalController(local) as controller:  # the synthesized controller environment: fleet mode, GPU_SLOTS=2
        controller.scheduled()
        assert controller.drain()
    (run,) = controller.runs
    assert run.record is not None and run.record["decision"]["desired"] == INSTANCES, run.error
    up = wait_for(
        "4 members in service",
        lambda: (m := members(asg, local.fleet_name)) and all(i["LifecycleState"] == "InService" for i in m) and m,
    )
    assert len(up) == INSTANCES
    # /healthz's view of the fleet: its members (the pool is empty at desired = max), as EC2 states them
    gpus = GpuStates(local.client("ec2"), fleet_name=local.fleet_name, autoscaling=asg)
    assert gpus.describe() == {m["InstanceId"]: InstanceState.RUNNING for m in up}

    with ExitStack() as stack:
        for n, member in enumerate(up):
            instance = member["InstanceId"]
            imds = stack.enter_context(
                MetadataServer(instance, target_lifecycle_state=partial(autoscaling.target_lifecycle_state, instance))
            )
            env = worker_env(
                local,
                tmp_path / f"work-{n}",
                WORKER_ID=f"host-{n}",
                GPU_SLOTS=str(SLOTS),
                TASK_TYPES_FILE=str(types),
                GPU_FLEET_NAME=local.fleet_name,
                INSTANCE_METADATA_URL=imds.url,
                METADATA_WATCH_SECONDS="0.2",
            )
            stack.enter_context(running(build(env)))
        wait_for("8 jobs to arrive", lambda: len(gate.arrived()) == INSTANCES * SLOTS, timeout=60)
        statuses = [store.get(t).status.value for t in tasks]  # type: ignore[union-attr]
        assert sorted(statuses) == ["QUEUED"] * 2 + ["RUNNING"] * 8
        assert all(m["ProtectedFromScaleIn"] for m in members(asg, local.fleet_name))  # every member busy
        gate.open()
        wait_for(
            "all 10 to succeed",
            lambda: all(store.get(t).status.value == "SUCCEEDED" for t in tasks),  # type: ignore[union-attr]
            timeout=60,
        )
        wait_for(
            "protection cleared", lambda: not any(m["ProtectedFromScaleIn"] for m in members(asg, local.fleet_name))
        )
