"""The controller in fleet mode (functions/shutdown/fleet.py) against the local AWS (moto on 127.0.0.1, the Auto
Scaling model of localaws/autoscaling.py installed): the `local` environment's queue and table, and the fleet's
group built from a Terraform resource of its shape through localaws/fleet_resources.py, max 4, a warm pool reused on
scale in, the hand-back hook. The controller runs as the Lambda runs it, in-process (localaws/lambdas.py), in fleet
mode because its environment names GPU_FLEET_NAME. The issue's proofs at this level: one task wakes one instance; a
burst of 10 tasks at 2 slots wakes 4, never 5; a busy (protected) instance is never chosen for scale-in; the
backstop never lowers the desired capacity while work waits or runs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import localaws
from core.contract import SettingError
from functions.shutdown.handler import handler
from functions.shutdown.settings import ShutdownSettings
from localaws.lambdas import LocalController
from tests.test_localaws_autoscaling import GROUP, HOOK, Aws, fleet_resource, reset

SLOTS = 2
BASE_ENV = {"TASK_QUEUE_URL": "https://sqs.example/q", "TASK_TABLE_NAME": "task_store"}  # what every mode needs


@dataclass
class FleetStack:
    local: Any  # localaws.LocalAws of the `local` environment
    aws: Aws  # the fleet's group beside it

    def env(self, **extra: str) -> dict[str, str]:
        """The controller's environment in fleet mode: the synthesized one, the group instead of instance ids."""
        return {"GPU_INSTANCE_IDS": "", "GPU_FLEET_NAME": GROUP, "GPU_SLOTS": str(SLOTS), **extra}

    def run(self, *, clock: Callable[[], float] = time.time, **extra: str) -> dict[str, Any]:
        """One scheduled run of the controller; its logged record."""
        with LocalController(self.local, env=self.env(**extra), clock=clock) as controller:
            controller.scheduled()
            assert controller.drain()
        (run,) = controller.runs
        assert run.error is None and run.record is not None, run.error
        return run.record

    def submit(self, count: int = 1) -> list[str]:
        """`count` tasks as the API leaves them: a QUEUED item, then its message."""
        ids = []
        for _ in range(count):
            task_id = f"t-{uuid.uuid4().hex}"
            now_ms = str(int(time.time() * 1000))
            item = {"task_id": {"S": task_id}, "status": {"S": "QUEUED"}, "created_at": {"N": now_ms}}
            self.local.client("dynamodb").put_item(TableName=self.local.table_name, Item=item)
            self.local.client("sqs").send_message(
                QueueUrl=self.local.queue_url, MessageBody=json.dumps({"task_id": task_id})
            )
            ids.append(task_id)
        return ids


@pytest.fixture
def stack(local_aws: Any) -> FleetStack:
    aws = Aws(local_aws.endpoint_url)
    aws.create("aws_autoscaling_group", fleet_resource(aws.launch_template(), aws.zones()))
    return FleetStack(local_aws, aws)


def after_the_window(stack: FleetStack) -> Callable[[], float]:
    """The controller's clock, one idle window (and a minute) after now: every member has been idle that long."""
    window = float(stack.local.lambda_env["IDLE_WINDOW_SECONDS"]) + 60
    return lambda: time.time() + window


# -- scale out ---------------------------------------------------------------------------------------------------------
def test_one_queued_task_wakes_exactly_one_instance_a_warm_one(stack: FleetStack) -> None:
    warm = set(stack.aws.pool())
    stack.submit(1)
    record = stack.run()
    assert record["decision"]["action"] == "SCALE_OUT" and record["decision"]["desired"] == 1
    assert record["outcome"] == [{"fleet": GROUP, "from": 0, "to": 1}]
    (started,) = stack.aws.members()
    assert started in warm and stack.aws.ec2_states()[started] == "running"  # a start of a stopped one, not a launch
    assert len(stack.aws.pool()) == 3 and set(stack.aws.ec2_states()) == warm
    again = stack.run()  # the same backlog: nothing more wakes
    assert again["decision"]["action"] == "NONE" and again["outcome"] == [] and len(stack.aws.members()) == 1


def test_a_burst_of_ten_tasks_at_two_slots_wakes_four_of_max_four_never_five(stack: FleetStack) -> None:
    warm = set(stack.aws.pool())
    stack.submit(10)
    record = stack.run()
    assert record["slots"] == SLOTS and record["first_decision"]["desired"] == 4  # ceil(10 / 2) = 5, max 4
    assert stack.aws.group()["DesiredCapacity"] == 4
    assert set(stack.aws.members()) == warm and stack.aws.pool() == {}  # all four warm, none launched


# -- scale in: the backstop --------------------------------------------------------------------------------------------
def test_after_the_window_the_backstop_scales_in_only_the_idle_instances(stack: FleetStack) -> None:
    stack.aws.set_desired(3)
    busy, *idle = list(stack.aws.members())
    stack.aws.protect(busy)  # its adapter holds protection while a slot runs a task
    record = stack.run(clock=after_the_window(stack))
    assert record["first_decision"]["action"] == "SCALE_IN" and "recheck" in record
    assert record["decision"]["desired"] == 1  # down to the protected ones
    assert stack.aws.members() == {busy: "InService"}
    pool = stack.aws.pool()
    assert {pool[i] for i in idle} == {"Warmed:Pending:Wait"}  # back to the pool, through the hand-back hook
    for instance in idle:  # what their adapters do once their slots are handed back
        stack.aws.asg.complete_lifecycle_action(
            AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, LifecycleActionResult="CONTINUE", InstanceId=instance
        )
    assert {stack.aws.pool()[i] for i in idle} == {"Warmed:Stopped"}
    assert {stack.aws.ec2_states()[i] for i in idle} == {"stopped"} and stack.aws.ec2_states()[busy] == "running"


@pytest.mark.parametrize("work", ["queued", "in flight", "running heartbeat"])
def test_the_backstop_never_lowers_the_desired_capacity_while_work_waits_or_runs(stack: FleetStack, work: str) -> None:
    stack.aws.set_desired(2)
    clock = after_the_window(stack)
    if work == "queued":
        stack.submit(1)
    elif work == "in flight":
        stack.submit(1)
        stack.local.client("sqs").receive_message(QueueUrl=stack.local.queue_url, VisibilityTimeout=600)
    else:  # a RUNNING item whose worker beat just now (by the controller's clock), with no message in flight
        beat = str(int(clock() * 1000))
        item = {"task_id": {"S": "t-running"}, "status": {"S": "RUNNING"}, "created_at": {"N": beat}}
        stack.local.client("dynamodb").put_item(
            TableName=stack.local.table_name, Item={**item, "heartbeat_at": {"N": beat}}
        )
    record = stack.run(clock=clock)
    assert record["decision"]["action"] == "NONE" and record["outcome"] == []
    assert stack.aws.group()["DesiredCapacity"] == 2 and len(stack.aws.members()) == 2


def test_inside_the_window_an_idle_fleet_is_left_as_it_is(stack: FleetStack) -> None:
    stack.aws.set_desired(1)
    record = stack.run(MIN_UPTIME_SECONDS="0")
    assert record["decision"]["action"] == "NONE" and "< window" in record["decision"]["reason"]
    assert stack.aws.group()["DesiredCapacity"] == 1


# -- a stuck member: rebooted, then replaced through SetInstanceHealth ----------------------------------------------
def test_a_stuck_member_is_rebooted_then_marked_unhealthy_and_replaced_and_its_task_requeued(stack: FleetStack) -> None:
    """No adapter runs here: the member's liveness and its claim are written as its adapter writes them (HostStore.seen,
    TaskStore.claim); the controller's clock runs one, then two STUCK_AFTER_SECONDS ahead of them. First the model of
    SetInstanceHealth itself (localaws/autoscaling.py): within the group's HealthCheckGracePeriod (300 s) of entering
    InService an Unhealthy that respects the grace period is not applied, and a pool instance is no member."""
    from botocore.exceptions import ClientError

    from core.hosts import HostStore
    from localaws import autoscaling
    from tests._adapter_support import store_for
    from tests.test_stuck_worker import hosts_table

    stack.aws.set_desired(1)
    (member,) = stack.aws.members()
    stack.aws.asg.set_instance_health(InstanceId=member, HealthStatus="Unhealthy")
    assert stack.aws.members() == {member: "InService"}
    (pooled, *_) = stack.aws.pool()
    with pytest.raises(ClientError, match="No managed instance found"):
        stack.aws.asg.set_instance_health(InstanceId=pooled, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False)
    table = hosts_table(stack.local)
    hosts = HostStore(stack.local.client("dynamodb"), table)
    store = store_for(stack.local)
    now_ms = int(time.time() * 1000)
    held = store.create(task_type="noop", params={})
    store.claim(held.task_id, worker="gpu-m", stale_after_ms=900_000)
    hosts.seen(member, worker="gpu-m", at_ms=now_ms)
    stack.submit(1)  # work waits
    env = {"HOSTS_TABLE_NAME": table, "STUCK_AFTER_SECONDS": "600", "MIN_UPTIME_SECONDS": "0"}

    def steps(record: dict[str, Any]) -> list[tuple[str, str]]:
        return [(d["instance_id"], d["action"]) for d in record["stuck"]["done"]]

    reboot = stack.run(clock=lambda: time.time() + 601, **env)
    assert steps(reboot) == [(member, "reboot")] and autoscaling.reboots(member) == 1
    assert [i["instance_id"] for i in reboot["intervals"]] == [member]  # billed: EC2 reports it running
    assert stack.aws.members() == {member: "InService"}
    stop = stack.run(clock=lambda: time.time() + 1202, **env)
    assert steps(stop) == [(member, "stop")] and stop["stuck"]["done"][0]["health"] == "Unhealthy"
    members = stack.aws.members()
    assert members.pop(member) == "Terminating:Wait"  # through the hand-back hook, protection or not
    assert list(members.values()) == ["InService"] and stack.aws.group()["DesiredCapacity"] == 1  # from the pool
    requeued = store.get(held.task_id)
    assert requeued is not None and requeued.status.value == "QUEUED" and requeued.worker is None
    assert requeued.enqueue_id == stop["stuck"]["done"][0]["requeued"][0]["enqueue_id"] != held.enqueue_id


# -- the handler, its settings -----------------------------------------------------------------------------------------
def test_the_handler_in_fleet_mode_logs_one_json_line_with_the_inputs_and_the_decision_after_its_metrics(
    stack: FleetStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {**stack.local.lambda_env, **stack.env(), "AWS_ENDPOINT_URL": stack.local.endpoint_url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HOSTS_TABLE_NAME", raising=False)  # the hosts upkeep has its own test below
    stack.submit(3)
    capsys.readouterr()
    answer = handler({"source": "aws.events"}, None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    *metrics, record = [json.loads(line) for line in lines]
    assert record["event"] == "gpu_idle_decision" and record["fleet_name"] == GROUP
    (plain,) = metrics  # one metric line before the decision: no stuck-worker step was taken
    counts = (plain["InstancesUp"], plain["TasksWaiting"], plain["InstanceStarts"], plain["InstanceStops"])
    assert counts == (0, 3, 2, 0)
    assert (
        record["observation"]["visible"] == 3 and record["fleet"]["max_size"] == 4 and len(record["fleet"]["warm"]) == 4
    )
    assert answer["action"] == "SCALE_OUT" and record["decision"]["desired"] == 2  # ceil(3 / 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPU_INSTANCE_IDS": "i-0f0f6fd680921de5f", "GPU_FLEET_NAME": GROUP}, "set exactly one of"),
        ({"GPU_INSTANCE_IDS": "", "GPU_FLEET_NAME": ""}, "neither is set"),
        ({"GPU_INSTANCE_IDS": "", "GPU_FLEET_NAME": GROUP, "GPU_SLOTS": "0"}, "GPU_SLOTS: 0 is not valid"),
        ({"GPU_INSTANCE_IDS": "", "GPU_FLEET_NAME": GROUP, "GPU_SLOTS": "two"}, "GPU_SLOTS: 'two' is not valid"),
        ({"GPU_FLEET_NAME": GROUP, "STUCK_AFTER_SECONDS": "0"}, "STUCK_AFTER_SECONDS: 0 is not valid"),
        ({"GPU_FLEET_NAME": GROUP, "STUCK_AFTER_SECONDS": "soon"}, "STUCK_AFTER_SECONDS: 'soon' is not valid"),
    ],
)
def test_settings_name_exactly_one_mode_and_a_valid_slot_count(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message) as caught:
        ShutdownSettings.from_env({**BASE_ENV, **env})
    assert "\n" not in str(caught.value)


def test_slots_default_to_one_and_adopt_mode_is_unchanged_and_the_upkeep_is_off_by_default() -> None:
    fleet = ShutdownSettings.from_env({**BASE_ENV, "GPU_FLEET_NAME": GROUP})
    assert fleet.fleet_mode and fleet.slots == 1
    adopt = ShutdownSettings.from_env({**BASE_ENV, "GPU_INSTANCE_IDS": "i-0f0f6fd680921de5f,i-0f0f6fd680921de60"})
    assert not adopt.fleet_mode and adopt.instance_ids == ("i-0f0f6fd680921de5f", "i-0f0f6fd680921de60")
    # Without HOSTS_TABLE_NAME no upkeep; the stuck window and the namespace are the contract's defaults.
    assert adopt.hosts_table_name is None and adopt.stuck.stuck_after_s == 600 and adopt.stuck.quarantine_s == 1800
    assert adopt.metrics_namespace == "GpuOrchestrator"


# -- the synthesized fleet environment ---------------------------------------------------------------------------------
def test_the_synthesized_local_fleet_environment_wakes_one_warm_instance_for_one_task(
    moto_endpoint: str, synthesized: Any
) -> None:
    """`local-fleet` as the stacks declare it (environments.toml): the group from its synthesized JSON, the
    controller with its own synthesized environment (GPU_FLEET_NAME, GPU_SLOTS)."""
    reset(moto_endpoint)
    local = localaws.build(synthesized("local-fleet"), moto_endpoint)
    assert local.fleet_name == "gpu-fleet-local-fleet" and local.env()["GPU_FLEET_NAME"] == local.fleet_name
    settings = ShutdownSettings.from_env(local.lambda_env)
    assert settings.fleet_name == local.fleet_name and settings.slots == 2 and settings.instance_ids == ()
    asg = local.client("autoscaling")
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[local.fleet_name])["AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"], group["Instances"]) == (0, 4, 0, [])
    hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=local.fleet_name)["LifecycleHooks"]
    assert [(h["LifecycleHookName"], h["DefaultResult"]) for h in hooks] == [
        (f"{local.fleet_name}-handback", "CONTINUE")
    ]
    warm = {i["InstanceId"] for i in asg.describe_warm_pool(AutoScalingGroupName=local.fleet_name)["Instances"]}
    assert len(warm) == 4  # prepared stopped from the synthesized launch template
    stack = FleetStack(local, Aws(moto_endpoint))
    stack.submit(1)
    with LocalController(local) as controller:  # its own environment: fleet mode
        controller.scheduled()
        assert controller.drain()
    (run,) = controller.runs
    assert run.record is not None and run.record["decision"]["action"] == "SCALE_OUT", run.error
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[local.fleet_name])["AutoScalingGroups"][0]
    (member,) = group["Instances"]
    assert member["InstanceId"] in warm
