"""The local AWS's Auto Scaling group (localaws/autoscaling.py) against moto on 127.0.0.1, over HTTP: the warm pool
prepared stopped, scale-out starting warm instances (same ids) before launching, scale-in returning unprotected
instances stopped to the pool, protection, the terminating hook (wait state, CompleteLifecycleAction, heartbeat,
timeout and default result), target lifecycle states along the way, TerminateInstanceInAutoScalingGroup, Spot, and a
reset. Each group is built from a Terraform resource of the fleet's shape through localaws/fleet_resources.py; time
is a test clock injected into the model, never the wall clock."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from localaws import autoscaling
from localaws.autoscaling import TERMINATING, LifecycleAction
from localaws.gpu_resources import MOTO_GPU_AMI, read_availability_zones
from localaws.resources import create
from localaws.tfjson import UnsupportedTerraform

GROUP = "gpu-fleet-test"
HOOK = f"{GROUP}-handback"
ENV_TAG = "gpu-orchestrator:environment"
PROFILE = "gpu-test-profile"


@dataclass
class Clock:
    """The model's clock: moves only when a test says so."""

    t: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Aws:
    """Clients of the local AWS, and the Terraform creators' view of it."""

    endpoint: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create(self, rtype: str, args: dict[str, Any]) -> dict[str, Any]:
        return create(rtype, self.client, args, Path("."), f"test/{rtype}.fleet")

    @property
    def asg(self) -> Any:
        return self.client("autoscaling")

    def zones(self) -> list[str]:
        return list(read_availability_zones(self.client, {"state": "available"})["names"])

    def launch_template(self) -> str:
        """The create mode's launch template (localaws/gpu_resources.py), with its instance profile."""
        iam = self.client("iam")
        trust = {
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ]
        }
        iam.create_role(RoleName="gpu-test-role", AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName=PROFILE)
        iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName="gpu-test-role")
        made = self.create(
            "aws_launch_template",
            {
                "name": "gpu-host-test",
                "image_id": MOTO_GPU_AMI,
                "instance_type": "g5.xlarge",
                "update_default_version": True,
                "metadata_options": {
                    "http_endpoint": "enabled",
                    "http_tokens": "required",
                    "http_put_response_hop_limit": 2,
                },
                "iam_instance_profile": {"name": PROFILE},
                "tag_specifications": [{"resource_type": "instance", "tags": {"Name": "gpu-host-test"}}],
            },
        )
        return str(made["id"])

    def group(self) -> dict[str, Any]:
        return dict(self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0])

    def members(self) -> dict[str, str]:
        return {i["InstanceId"]: i["LifecycleState"] for i in self.group()["Instances"]}

    def pool(self) -> dict[str, str]:
        return {
            i["InstanceId"]: i["LifecycleState"]
            for i in self.asg.describe_warm_pool(AutoScalingGroupName=GROUP)["Instances"]
        }

    def ec2_states(self) -> dict[str, str]:
        """EC2's state of every instance the group ever launched (by the tag Auto Scaling puts on them)."""
        mine = [{"Name": "tag:aws:autoscaling:groupName", "Values": [GROUP]}]
        out = self.client("ec2").describe_instances(Filters=mine)["Reservations"]
        return {i["InstanceId"]: i["State"]["Name"] for r in out for i in r["Instances"]}

    def set_desired(self, n: int) -> None:
        self.asg.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=n, HonorCooldown=False)

    def protect(self, instance_id: str, on: bool = True) -> None:
        self.asg.set_instance_protection(AutoScalingGroupName=GROUP, InstanceIds=[instance_id], ProtectedFromScaleIn=on)


def fleet_resource(template_id: str, zones: list[str], **changes: Any) -> dict[str, Any]:
    """An aws_autoscaling_group of the fleet's shape (on-demand: a warm pool reused on scale in, the hand-back hook)."""
    resource: dict[str, Any] = {
        "name": GROUP,
        "min_size": 0,
        "max_size": 4,
        "availability_zones": zones,
        "launch_template": {"id": template_id, "version": "$Latest"},
        "warm_pool": {"pool_state": "Stopped", "min_size": 0, "instance_reuse_policy": {"reuse_on_scale_in": True}},
        "initial_lifecycle_hook": [
            {"name": HOOK, "lifecycle_transition": TERMINATING, "heartbeat_timeout": 300, "default_result": "CONTINUE"}
        ],
        "tag": [
            {"key": ENV_TAG, "value": "test", "propagate_at_launch": True},
            {"key": "Name", "value": "gpu-fleet-test", "propagate_at_launch": True},
        ],
        "health_check_type": "EC2",
        "health_check_grace_period": 300,
        "termination_policies": ["Default"],
        "suspended_processes": ["AZRebalance"],
        "protect_from_scale_in": False,
        "lifecycle": {"ignore_changes": ["desired_capacity"]},
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def spot_resource(template_id: str, zones: list[str], **changes: Any) -> dict[str, Any]:
    """The Spot variant: an all-Spot capacity-optimized mixed instances policy, capacity rebalancing, no pool."""
    spot = {
        "launch_template": None,
        "warm_pool": None,
        "capacity_rebalance": True,
        "mixed_instances_policy": {
            "instances_distribution": {
                "on_demand_base_capacity": 0,
                "on_demand_percentage_above_base_capacity": 0,
                "spot_allocation_strategy": "capacity-optimized",
            },
            "launch_template": {
                "launch_template_specification": {"launch_template_id": template_id, "version": "$Latest"},
                "override": [{"instance_type": "g5.12xlarge"}, {"instance_type": "g6.12xlarge"}],
            },
        },
    }
    return fleet_resource(template_id, zones, **{**spot, **changes})


def reset(endpoint: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)


@pytest.fixture
def clock() -> Iterator[Clock]:
    test_clock = Clock()
    with autoscaling.settings(clock=test_clock):
        yield test_clock


@pytest.fixture
def aws(moto_endpoint: str, clock: Clock) -> Aws:
    reset(moto_endpoint)
    return Aws(moto_endpoint)


@pytest.fixture
def fleet(aws: Aws) -> Aws:
    """The on-demand fleet group: max 4, a warm pool reused on scale in, the hand-back hook (300 s, CONTINUE)."""
    aws.create("aws_autoscaling_group", fleet_resource(aws.launch_template(), aws.zones()))
    return aws


def error_of(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return f"{caught.value.response['Error']['Code']}: {caught.value.response['Error']['Message']}"


# -- the warm pool -----------------------------------------------------------------------------------------------------
def test_the_warm_pool_is_prepared_stopped_from_the_template(fleet: Aws) -> None:
    group = fleet.group()
    assert (group["DesiredCapacity"], group["MinSize"], group["MaxSize"], group["Instances"]) == (0, 0, 4, [])
    pool = fleet.pool()
    assert len(pool) == 4 and set(pool.values()) == {"Warmed:Stopped"}
    assert {fleet.ec2_states()[i] for i in pool} == {"stopped"}
    described = fleet.client("ec2").describe_instances(InstanceIds=list(pool))["Reservations"]
    for instance in (i for r in described for i in r["Instances"]):
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[ENV_TAG] == "test" and tags["aws:autoscaling:groupName"] == GROUP  # propagated at launch
        assert instance["IamInstanceProfile"]["Arn"].endswith(f"/{PROFILE}")  # the template's profile
    listed = fleet.asg.describe_auto_scaling_instances()["AutoScalingInstances"]
    assert {i["InstanceId"]: i["LifecycleState"] for i in listed} == pool
    assert all(autoscaling.target_lifecycle_state(i) == "Warmed:Stopped" for i in pool)


def test_scale_out_starts_warm_instances_same_ids_and_launches_only_when_the_pool_is_empty(
    aws: Aws, clock: Clock
) -> None:
    # A pool of 2 (MaxGroupPreparedCapacity) for a group of max 4: the third instance has to be launched.
    warm_pool = {
        "pool_state": "Stopped",
        "max_group_prepared_capacity": 2,
        "instance_reuse_policy": {"reuse_on_scale_in": True},
    }
    aws.create("aws_autoscaling_group", fleet_resource(aws.launch_template(), aws.zones(), warm_pool=warm_pool))
    warm = set(aws.pool())
    assert len(warm) == 2
    clock.advance(1000)  # a later start: EC2 resets LaunchTime
    with autoscaling.settings(clock=clock, pending_s=30):
        aws.set_desired(1)
        (started,) = aws.members().items()
        assert started[0] in warm and started[1] == "Pending"
        assert aws.ec2_states()[started[0]] == "running"
        assert autoscaling.target_lifecycle_state(started[0]) == "InService"
        described = aws.client("ec2").describe_instances(InstanceIds=[started[0]])["Reservations"][0]["Instances"][0]
        assert described["LaunchTime"].timestamp() == pytest.approx(clock.t, abs=1)
        clock.advance(30)
        assert aws.members() == {started[0]: "InService"}
    before = set(aws.ec2_states())
    aws.set_desired(3)
    members = aws.members()
    launched = set(members) - warm
    assert (
        warm <= set(members) and len(launched) == 1 and launched.isdisjoint(before)
    )  # the pool first, then one launch
    assert aws.pool() == {}  # 2 prepared - 3 desired: no pool


def test_scale_in_with_reuse_returns_unprotected_instances_stopped_to_the_pool(fleet: Aws) -> None:
    fleet.asg.delete_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=HOOK)  # no wait: straight back
    fleet.set_desired(2)
    busy, idle = list(fleet.members())
    fleet.protect(busy)
    fleet.set_desired(1)
    assert fleet.members() == {busy: "InService"}
    assert fleet.pool()[idle] == "Warmed:Stopped" and fleet.ec2_states()[idle] == "stopped"  # stopped, not terminated
    assert len(fleet.pool()) == 3 and "terminated" not in fleet.ec2_states().values()
    launched = set(fleet.ec2_states())
    fleet.set_desired(4)  # every instance the group ever launched is back in service: none launched, none lost
    assert set(fleet.members()) == launched and idle in launched


def test_a_protected_instance_is_never_chosen_and_an_all_protected_scale_in_waits_for_the_protection(
    fleet: Aws,
) -> None:
    fleet.asg.delete_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=HOOK)
    fleet.set_desired(3)
    a, b, c = list(fleet.members())
    for instance in (a, b, c):
        fleet.protect(instance)
    fleet.set_desired(0)  # AWS: "its desired capacity is decremented. However, ... can't terminate ... until ..."
    assert fleet.group()["DesiredCapacity"] == 0 and fleet.members() == {a: "InService", b: "InService", c: "InService"}
    fleet.protect(b, on=False)
    assert fleet.members() == {a: "InService", c: "InService"} and fleet.pool()[b] == "Warmed:Stopped"
    fleet.protect(c, on=False)
    assert fleet.members() == {a: "InService"} and fleet.pool()[c] == "Warmed:Stopped"  # the protected one stays
    assert len(fleet.pool()) == 3  # max 4 less the member that stays


def test_the_terminating_hook_holds_a_returning_instance_until_completed_or_timed_out(fleet: Aws, clock: Clock) -> None:
    fleet.set_desired(2)
    first, second = list(fleet.members())
    fleet.set_desired(0)
    for leaving in (first, second):  # back to the pool, through the hook: Warmed:Pending:Wait, still running
        assert fleet.pool()[leaving] == "Warmed:Pending:Wait" and fleet.ec2_states()[leaving] == "running"
        assert autoscaling.target_lifecycle_state(leaving) == "Warmed:Stopped"
    assert fleet.members() == {}
    fleet.asg.complete_lifecycle_action(
        AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, LifecycleActionResult="CONTINUE", InstanceId=first
    )
    assert fleet.pool()[first] == "Warmed:Stopped" and fleet.ec2_states()[first] == "stopped"
    # The other one is kept by heartbeats, then runs out: 300 s after the last one, CONTINUE (the default result).
    clock.advance(200)
    fleet.asg.record_lifecycle_action_heartbeat(AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, InstanceId=second)
    clock.advance(299)
    assert fleet.pool()[second] == "Warmed:Pending:Wait"
    clock.advance(1)
    assert fleet.pool()[second] == "Warmed:Stopped" and fleet.ec2_states()[second] == "stopped"
    assert "No active Lifecycle Action found" in error_of(
        lambda: fleet.asg.complete_lifecycle_action(
            AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, LifecycleActionResult="CONTINUE", InstanceId=second
        )
    )


def test_terminate_instance_in_group_terminates_through_the_hook_and_the_pool_refills(fleet: Aws) -> None:
    fleet.set_desired(2)
    leaving, staying = list(fleet.members())
    fleet.protect(leaving)  # protection does not hold against TerminateInstanceInAutoScalingGroup
    activity = fleet.asg.terminate_instance_in_auto_scaling_group(
        InstanceId=leaving, ShouldDecrementDesiredCapacity=True
    )
    assert leaving in activity["Activity"]["Description"]
    assert fleet.group()["DesiredCapacity"] == 1
    assert fleet.members() == {leaving: "Terminating:Wait", staying: "InService"}
    assert autoscaling.target_lifecycle_state(leaving) == "Terminated" and fleet.ec2_states()[leaving] == "running"
    token = autoscaling.lifecycle_token(leaving, HOOK)
    assert token
    fleet.asg.complete_lifecycle_action(
        AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, LifecycleActionResult="ABANDON", LifecycleActionToken=token
    )
    assert fleet.ec2_states()[leaving] == "terminated" and fleet.members() == {staying: "InService"}
    assert autoscaling.target_lifecycle_state(leaving) == "Terminated"
    pool = fleet.pool()
    assert len(pool) == 3 and leaving not in pool  # max 4 - desired 1: a fresh launch replaces the terminated one
    # Without decrementing, the replacement is a warm start.
    fleet.asg.delete_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=HOOK)
    fleet.asg.terminate_instance_in_auto_scaling_group(InstanceId=staying, ShouldDecrementDesiredCapacity=False)
    (replacement,) = fleet.members()
    assert replacement in pool and fleet.ec2_states()[staying] == "terminated"


def test_refusals_as_aws_answers_them(fleet: Aws) -> None:
    pooled = next(iter(fleet.pool()))
    assert "warm pool" in error_of(
        lambda: fleet.asg.terminate_instance_in_auto_scaling_group(
            InstanceId=pooled, ShouldDecrementDesiredCapacity=True
        )
    )
    assert "warm pool" in error_of(lambda: fleet.protect(pooled))
    assert "is not part of Auto Scaling group" in error_of(lambda: fleet.protect("i-0000000000000dead"))
    assert error_of(lambda: fleet.set_desired(5)) == (
        "ValidationError: New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup."
    )
    fleet.set_desired(1)
    (member,) = fleet.members()
    fleet.asg.update_auto_scaling_group(AutoScalingGroupName=GROUP, MinSize=1)
    assert "violate group's min size" in error_of(
        lambda: fleet.asg.terminate_instance_in_auto_scaling_group(
            InstanceId=member, ShouldDecrementDesiredCapacity=True
        )
    )
    assert "LifecycleActionResult" in error_of(
        lambda: fleet.asg.complete_lifecycle_action(
            AutoScalingGroupName=GROUP, LifecycleHookName=HOOK, LifecycleActionResult="PAUSE", InstanceId=member
        )
    )


def test_the_hook_deadline_is_the_heartbeat_timeout_capped_by_the_global_timeout() -> None:
    action = LifecycleAction(
        "h", "token", started=0.0, heartbeat_at=0.0, heartbeat_timeout=300, default_result="ABANDON"
    )
    assert action.deadline == 300
    action.heartbeat_at = 29_900
    assert action.deadline == 30_000  # 100 x HeartbeatTimeout
    long = LifecycleAction(
        "h", "t", started=0.0, heartbeat_at=172_000, heartbeat_timeout=7200, default_result="CONTINUE"
    )
    assert long.deadline == 172_800  # 48 h


# -- health, EC2's own calls, Spot -------------------------------------------------------------------------------------
def test_a_member_stopped_behind_the_groups_back_is_replaced_from_the_pool(fleet: Aws, clock: Clock) -> None:
    fleet.asg.delete_lifecycle_hook(AutoScalingGroupName=GROUP, LifecycleHookName=HOOK)
    fleet.set_desired(1)
    (powered_off,) = fleet.members()
    fleet.client("ec2").stop_instances(InstanceIds=[powered_off])  # a bare poweroff: the group sees it unhealthy
    clock.advance(299)
    assert fleet.members() == {powered_off: "InService"}  # inside the health check grace period (300 s)
    clock.advance(1)
    (replacement,) = fleet.members()
    assert replacement != powered_off and fleet.ec2_states()[powered_off] == "terminated"
    fleet.client("ec2").terminate_instances(InstanceIds=[replacement])  # EC2's own terminate: replaced too
    (again,) = fleet.members()
    assert again not in (powered_off, replacement) and fleet.ec2_states()[again] == "running"


def test_a_warm_pool_is_refused_for_a_spot_group(aws: Aws) -> None:
    template = aws.launch_template()
    with pytest.raises(ClientError, match="mixed instances policy"):
        aws.create("aws_autoscaling_group", spot_resource(template, aws.zones(), warm_pool={"pool_state": "Stopped"}))


def test_spot_interruption_hands_off_through_the_hook_and_ec2_reclaims_after_two_minutes(
    aws: Aws, clock: Clock
) -> None:
    aws.create("aws_autoscaling_group", spot_resource(aws.launch_template(), aws.zones()))
    aws.set_desired(2)
    members = list(aws.members())
    described = aws.client("ec2").describe_instances(InstanceIds=members)["Reservations"]
    assert {(i["InstanceLifecycle"], i["InstanceType"]) for r in described for i in r["Instances"]} == {
        ("spot", "g5.12xlarge")
    }
    interrupted = members[0]
    assert autoscaling.interrupt(interrupted) == pytest.approx(clock.t + 120)
    now = aws.members()
    assert now[interrupted] == "Terminating:Wait" and len(now) == 3  # the replacement at once, beside the hook
    clock.advance(119)
    assert aws.ec2_states()[interrupted] == "running"
    clock.advance(1)
    assert aws.ec2_states()[interrupted] == "terminated" and interrupted not in aws.members()
    # A rebalance recommendation: the replacement first, then the old one leaves through the hook.
    at_risk = members[1]
    assert autoscaling.recommend_rebalance(at_risk)
    assert aws.members()[at_risk] == "Terminating:Wait" and len(aws.members()) == 3
    with pytest.raises(ValueError, match="not a Spot instance"):
        autoscaling.interrupt("i-0000000000000dead")


# -- the creator, and a reset ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"default_cooldown": 300}, "default_cooldown"),
        ({"vpc_zone_identifier": ["subnet-1"]}, "exactly one of availability_zones, vpc_zone_identifier"),
        ({"warm_pool": {"pool_state": "Running"}}, "Stopped only"),
        (
            {"initial_lifecycle_hook": [{"name": "up", "lifecycle_transition": "autoscaling:EC2_INSTANCE_LAUNCHING"}]},
            "only autoscaling:EC2_INSTANCE_TERMINATING hooks",
        ),
        ({"initial_lifecycle_hook": [{"name": "x", "lifecycle_transition": TERMINATING, "role_arn": "r"}]}, "role_arn"),
        ({"tag": [{"key": "k", "value": "v", "propagate_at_launch": "maybe"}]}, "not a boolean"),
        ({"health_check_type": "ELB"}, "health_check_type 'ELB'"),
        ({"termination_policies": ["OldestInstance"]}, "Default termination policy"),
        ({"suspended_processes": ["Terminate"]}, "AZRebalance only"),
    ],
)
def test_the_creator_refuses_what_it_does_not_model(aws: Aws, changes: dict[str, Any], message: str) -> None:
    with pytest.raises((UnsupportedTerraform, ClientError), match=message):
        aws.create("aws_autoscaling_group", fleet_resource(aws.launch_template(), aws.zones(), **changes))


def test_only_an_all_spot_distribution_is_modelled(aws: Aws) -> None:
    resource = spot_resource(aws.launch_template(), aws.zones())
    resource["mixed_instances_policy"]["instances_distribution"]["on_demand_percentage_above_base_capacity"] = 50
    with pytest.raises(UnsupportedTerraform, match="all-Spot"):
        aws.create("aws_autoscaling_group", resource)


def test_a_reset_clears_the_groups_and_leaves_the_model_working(fleet: Aws, moto_endpoint: str) -> None:
    fleet.set_desired(1)
    (old,) = fleet.members()
    reset(moto_endpoint)
    assert autoscaling.target_lifecycle_state(old) is None
    fleet.create("aws_autoscaling_group", fleet_resource(fleet.launch_template(), fleet.zones()))
    fleet.set_desired(1)
    (new,) = fleet.members()
    assert new != old and len(fleet.pool()) == 3 and autoscaling.target_lifecycle_state(new) == "InService"


def test_importing_localaws_does_not_import_moto() -> None:
    """localaws/authserver.py sets INITIAL_NO_AUTH_ACTION_COUNT before it imports moto (moto.settings reads it once,
    at import); the package it lives in must not import moto first, or the enforcing server enforces nothing."""
    import subprocess
    import sys

    code = "import sys, localaws, localaws.authserver; print(sorted(m for m in sys.modules if m.startswith('moto')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
