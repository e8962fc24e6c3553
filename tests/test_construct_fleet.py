"""GpuFleet and FleetGroup, each in a fresh stack holding only them: the synthesized Auto Scaling group for on demand
(the warm pool of stopped instances, reused on scale-in) and for Spot (the mixed instances policy, capacity
rebalancing, no warm pool), the termination hook, the settings that keep a busy instance (protection from the
adapter, AZRebalance suspended), ignore_changes on the desired capacity, the launch template it shares with create
mode, every grant, and the one-line refusals."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from cdktf import TerraformStack

from modules.config import EnvironmentConfig
from modules.fleet import (
    CONTROLLER_DESCRIBE_ACTIONS,
    MEMBER_ACTIONS,
    MEMBER_DESCRIBE_ACTIONS,
    FleetGroup,
    GpuFleet,
    fleet_for,
    group_arn,
)
from modules.host_template import ENVIRONMENT_TAG, HostSpec
from tests.infra_helpers import assert_grant, fresh_stack, one, reference, refusal, resources, synth

WHERE = {"region": "us-east-1", "account": "123456789012"}
HOST = HostSpec(
    environment="dev",
    parameter_prefix="/gpu-orchestrator/dev",
    instance_profile_name="gpu-instance-profile-dev",
    **WHERE,
)
GROUP_ARN = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/gpu-fleet-dev"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]


def spec(**changes: Any) -> HostSpec:
    return replace(HOST, **changes)


def fleet(stack: TerraformStack, **props: Any) -> GpuFleet:
    return GpuFleet(stack, "gpu", **{"name": "gpu-fleet-dev", "host": HOST, **props})


@pytest.fixture(scope="module")
def on_demand() -> tuple[GpuFleet, dict[str, Any]]:
    built = fleet(
        fresh_stack(), max_size=4, slots=2, host=spec(instance_type="g5.12xlarge"), handback_timeout_seconds=600
    )
    return built, synth(TerraformStack.of(built))


@pytest.fixture(scope="module")
def spot() -> tuple[GpuFleet, dict[str, Any]]:
    built = fleet(
        fresh_stack(), max_size=3, spot=True, spot_instance_types=["g5.12xlarge", "g6.12xlarge"], subnet_ids=SUBNETS
    )
    return built, synth(TerraformStack.of(built))


def template_ref(built: GpuFleet) -> tuple[str, str]:
    stack = TerraformStack.of(built)
    return reference(stack, built.launch_template.id), reference(stack, built.launch_template.latest_version)


# --- on demand ---


def test_on_demand_group_starts_from_zero_with_a_warm_pool_of_stopped_instances(on_demand: Any) -> None:
    built, doc = on_demand
    group = one(doc, "aws_autoscaling_group")
    assert (group["name"], group["min_size"], group["max_size"]) == ("gpu-fleet-dev", 0, 4)
    assert "desired_capacity" not in group  # the controller's: never set, never reset by an apply
    assert group["lifecycle"] == {"ignore_changes": ["desired_capacity"]}
    template_id, version = template_ref(built)
    assert group["launch_template"] == {"id": template_id, "version": version}
    assert group["warm_pool"] == {
        "pool_state": "Stopped",
        "min_size": 0,
        "instance_reuse_policy": {"reuse_on_scale_in": True},
    }
    assert "mixed_instances_policy" not in group and "capacity_rebalance" not in group
    (address,) = doc["data"]["aws_availability_zones"]
    assert doc["data"]["aws_availability_zones"][address]["state"] == "available"
    assert group["availability_zones"] == f"${{data.aws_availability_zones.{address}.names}}"
    assert "vpc_zone_identifier" not in group and "aws_subnet" not in doc["data"]


def test_a_busy_instance_stays_the_adapters_to_protect_and_no_rebalance_takes_it(on_demand: Any) -> None:
    _, doc = on_demand
    group = one(doc, "aws_autoscaling_group")
    assert group["protect_from_scale_in"] is False  # new instances unprotected: the adapter protects while busy
    assert group["suspended_processes"] == ["AZRebalance"]
    assert group["termination_policies"] == ["Default"]
    assert (group["health_check_type"], group["health_check_grace_period"]) == ("EC2", 300)
    assert "default_cooldown" not in group


def test_a_leaving_instance_gets_the_handback_hook_and_the_tags_propagate(on_demand: Any) -> None:
    built, doc = on_demand
    group = one(doc, "aws_autoscaling_group")
    assert group["initial_lifecycle_hook"] == [
        {
            "name": "gpu-fleet-dev-handback",
            "lifecycle_transition": "autoscaling:EC2_INSTANCE_TERMINATING",
            "heartbeat_timeout": 600,
            "default_result": "CONTINUE",
        }
    ]
    assert group["tag"] == [
        {"key": ENVIRONMENT_TAG, "value": "dev", "propagate_at_launch": True},
        {"key": "Name", "value": "gpu-fleet-dev", "propagate_at_launch": True},
    ]
    assert (built.name, built.hook_name, built.slots, built.max_size, built.spot) == (
        "gpu-fleet-dev",
        "gpu-fleet-dev-handback",
        2,
        4,
        False,
    )
    assert (
        reference(TerraformStack.of(built), built.arn)
        == f"${{aws_autoscaling_group.{next(iter(doc['resource']['aws_autoscaling_group']))}.arn}}"
    )


def test_the_launch_template_is_create_modes(on_demand: Any) -> None:
    built, doc = on_demand
    template = one(doc, "aws_launch_template")
    assert template["name"] == "gpu-fleet-dev" and template["instance_type"] == "g5.12xlarge"
    assert template["metadata_options"] == {
        "http_endpoint": "enabled",
        "http_tokens": "required",
        "http_put_response_hop_limit": 1,
    }
    assert template["block_device_mappings"][0]["ebs"]["encrypted"] == "true"
    assert template["iam_instance_profile"] == {"name": "gpu-instance-profile-dev"}
    assert base64.b64decode(template["user_data"]).decode() == built.script
    tags = {ENVIRONMENT_TAG: "dev"}
    assert template["tag_specifications"] == [
        {"resource_type": "instance", "tags": tags},
        {"resource_type": "volume", "tags": tags},
    ]
    group = one(doc, "aws_security_group")
    assert group["ingress"] == [] and "vpc_id" not in group
    assert not resources(doc, "aws_instance")


# --- spot ---


def test_spot_is_a_capacity_optimized_mixed_policy_with_rebalancing_and_no_warm_pool(spot: Any) -> None:
    built, doc = spot
    group = one(doc, "aws_autoscaling_group")
    template_id, version = template_ref(built)
    assert group["mixed_instances_policy"] == {
        "instances_distribution": {
            "on_demand_base_capacity": 0,
            "on_demand_percentage_above_base_capacity": 0,
            "spot_allocation_strategy": "capacity-optimized",
        },
        "launch_template": {
            "launch_template_specification": {"launch_template_id": template_id, "version": version},
            "override": [{"instance_type": "g5.12xlarge"}, {"instance_type": "g6.12xlarge"}],
        },
    }
    assert group["capacity_rebalance"] is True
    assert "warm_pool" not in group and "launch_template" not in group  # AWS refuses a warm pool with Spot
    assert (group["min_size"], group["max_size"]) == (0, 3)
    assert group["lifecycle"] == {"ignore_changes": ["desired_capacity"]}
    assert group["initial_lifecycle_hook"][0]["heartbeat_timeout"] == 300


def test_given_subnets_place_the_group_and_its_security_group_in_their_vpc(spot: Any) -> None:
    _, doc = spot
    group = one(doc, "aws_autoscaling_group")
    assert group["vpc_zone_identifier"] == SUBNETS and "availability_zones" not in group
    (address,) = doc["data"]["aws_subnet"]
    assert doc["data"]["aws_subnet"][address]["id"] == SUBNETS[0]
    assert one(doc, "aws_security_group")["vpc_id"] == f"${{data.aws_subnet.{address}.vpc_id}}"
    assert "aws_availability_zones" not in doc["data"]


def test_spot_types_default_to_the_instance_type() -> None:
    built = fleet(fresh_stack(), spot=True, host=spec(instance_type="g6.xlarge"))
    group = one(synth(TerraformStack.of(built)), "aws_autoscaling_group")
    assert group["mixed_instances_policy"]["launch_template"]["override"] == [{"instance_type": "g6.xlarge"}]


# --- grants ---


def test_the_group_arn_is_scoped_by_name_with_the_uuid_wildcarded() -> None:
    assert group_arn("gpu-fleet-dev", **WHERE) == GROUP_ARN
    assert FleetGroup(name="gpu-fleet-dev", **WHERE).arn == GROUP_ARN


def test_grant_is_autoscaling_actions_on_the_group_only(on_demand: Any) -> None:
    built, _ = on_demand
    stack = fresh_stack()
    assert_grant(
        stack,
        lambda role: FleetGroup(name="gpu-fleet-dev", **WHERE).grant(role, "autoscaling:UpdateAutoScalingGroup"),
        [(["autoscaling:UpdateAutoScalingGroup"], [GROUP_ARN])],
    )
    statements = built.grant(_role(fresh_stack()), "autoscaling:SetInstanceHealth")
    assert [(s.actions, s.resources) for s in statements] == [(("autoscaling:SetInstanceHealth",), (GROUP_ARN,))]


def test_grant_scale_sets_the_desired_capacity_and_reads_group_pool_and_instances() -> None:
    group = FleetGroup(name="gpu-fleet-dev", **WHERE)
    assert_grant(
        fresh_stack(),
        group.grant_scale,
        [
            (["autoscaling:SetDesiredCapacity"], [GROUP_ARN]),
            ([*CONTROLLER_DESCRIBE_ACTIONS, "ec2:DescribeInstances"], ["*"]),
        ],
    )
    assert set(CONTROLLER_DESCRIBE_ACTIONS) == {
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeWarmPool",
        "autoscaling:DescribeAutoScalingInstances",
    }


def test_grant_member_protects_hands_back_and_leaves_through_the_group() -> None:
    group = FleetGroup(name="gpu-fleet-dev", **WHERE)
    assert_grant(
        fresh_stack(),
        group.grant_member,
        [(MEMBER_ACTIONS, [GROUP_ARN]), (list(MEMBER_DESCRIBE_ACTIONS), ["*"])],
    )
    assert set(MEMBER_ACTIONS) == {
        "autoscaling:SetInstanceProtection",
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
        "autoscaling:SetDesiredCapacity",
    }


def test_grant_describe_is_read_only() -> None:
    group = FleetGroup(name="gpu-fleet-dev", **WHERE)
    assert_grant(
        fresh_stack(),
        group.grant_describe,
        [(["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], ["*"])],
    )


def test_the_constructs_grants_are_its_groups(on_demand: Any) -> None:
    built, _ = on_demand
    for grant in (built.grant_scale, built.grant_member, built.grant_describe):
        role = _role(fresh_stack())
        assert [(s.actions, s.resources) for s in grant(role)] == [
            (s.actions, s.resources) for s in getattr(built.scope, grant.__name__)(_role(fresh_stack()))
        ]


def _role(stack: TerraformStack) -> Any:
    from modules.iam import Role

    return Role(stack, "r", name="r", assumed_by="ec2.amazonaws.com", description="grantee")


# --- refusals ---


@pytest.mark.parametrize(
    ("build", "prop"),
    [
        (lambda s: fleet(s, max_size=0), "max_size"),
        (lambda s: fleet(s, max_size=101), "max_size"),
        (lambda s: fleet(s, slots=0), "slots"),
        (lambda s: fleet(s, slots=9), "slots"),
        (lambda s: fleet(s, handback_timeout_seconds=29), "handback_timeout_seconds"),
        (lambda s: fleet(s, handback_timeout_seconds=7201), "handback_timeout_seconds"),
        (lambda s: fleet(s, spot_instance_types=["g5.xlarge"]), "spot_instance_types"),  # on demand
        (lambda s: fleet(s, spot=True, spot_instance_types=["G5"]), "spot_instance_types"),
        (lambda s: fleet(s, spot=True, spot_instance_types=["g5.xlarge", "g5.xlarge"]), "spot_instance_types"),
        (
            lambda s: fleet(s, spot=True, spot_instance_types=[f"g{n}.xlarge" for n in range(41)]),
            "spot_instance_types",
        ),
        (lambda s: fleet(s, subnet_ids=["subnet-nope"]), "subnet_ids"),
        (lambda s: fleet(s, subnet_ids=[SUBNETS[0], SUBNETS[0]]), "subnet_ids"),
        (lambda s: fleet(s, name="gpu.fleet.dev"), "name"),  # its hook name would break PutLifecycleHook's rule
        (lambda s: fleet(s, name="no spaces allowed"), "name"),
        (lambda s: fleet(s, host=spec(instance_type="G5")), "instance_type"),
        (lambda s: fleet(s, host=spec(root_volume_gb=16385)), "root_volume_gb"),
        (lambda s: fleet(s, host=spec(ami_parameter="ami-0123456789abcdef0")), "ami_parameter"),
        (lambda s: fleet(s, host=spec(environment="dev env")), "environment"),
        (lambda s: fleet(s, host=spec(parameter_prefix="gpu-orchestrator/dev")), "parameter_prefix"),
        (lambda s: fleet(s, host=spec(instance_profile_name="no spaces")), "instance_profile_name"),
    ],
)
def test_refusals_name_the_prop_in_one_line(build: Any, prop: str) -> None:
    assert f"/gpu: {prop}=" in refusal(build)


def test_fleet_group_refuses_a_name_auto_scaling_refuses() -> None:
    from modules.props import ConstructPropError

    with pytest.raises(ConstructPropError, match="^FleetGroup: name='' is not 1-255 characters"):
        FleetGroup(name="", **WHERE)


# --- from the environment's config ---


def test_from_config_and_fleet_for_name_the_same_group() -> None:
    config = EnvironmentConfig(
        name="dev", account="123456789012", gpu_mode="fleet", fleet_max_size=4, gpus_per_instance=2
    )
    built = GpuFleet.from_config(fresh_stack(), "gpu", config=config, instance_profile_name="p")
    scoped = fleet_for(config)
    assert (built.name, built.hook_name, built.scope.arn) == (scoped.name, scoped.hook_name, scoped.arn)
    assert (built.name, built.max_size, built.slots) == ("gpu-fleet-dev", 4, 2)
    group = one(synth(TerraformStack.of(built)), "aws_autoscaling_group")
    assert group["max_size"] == 4 and "warm_pool" in group
