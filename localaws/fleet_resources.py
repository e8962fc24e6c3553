"""The creator of the GPU fleet's `aws_autoscaling_group` (fleet mode), registered with localaws.resources.creator.
Strict like localaws/resources.py: an argument, nested block or block field that is not modelled is an error.

The group behaves as localaws/autoscaling.py models it (warm pool, protection, the terminating hook); this module
turns the synthesized arguments into the API calls the AWS provider makes
(https://registry.terraform.io/providers/hashicorp/aws/latest/docs/resources/autoscaling_group): CreateAutoScalingGroup,
each initial_lifecycle_hook (PutLifecycleHook; the provider passes them in CreateAutoScalingGroup's
LifecycleHookSpecificationList, which moto does not read, so the group is created empty and sized once its hooks
exist), then PutWarmPool. Modelled: a launch template {id, version}, or a mixed instances policy that is all Spot
(on_demand_base_capacity 0, on_demand_percentage_above_base_capacity 0, spot_allocation_strategy
capacity-optimized) with instance type overrides; terminating hooks only (launch hooks are not modelled); a warm pool
of pool_state Stopped; EC2 health checks with their grace period, the Default termination policy, and AZRebalance as
the only suspended process (see HEALTH_CHECK_TYPES).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localaws.gpu_resources import _fields
from localaws.resources import Clients, _one, creator
from localaws.tfjson import UnsupportedTerraform

HOOK_FIELDS = ("name", "lifecycle_transition", "heartbeat_timeout", "default_result")
SPOT_STRATEGY = "capacity-optimized"
# Settings accepted only with the values whose behaviour the model has: EC2 health checks (a member EC2 reports not
# running is replaced, after the grace period), the default termination policy, and suspending AZRebalance (the model
# never rebalances across zones, so suspending it changes nothing).
HEALTH_CHECK_TYPES = ("EC2",)
TERMINATION_POLICIES = (["Default"],)
SUSPENDABLE = frozenset({"AZRebalance"})


def _flag(value: Any) -> bool:
    """A Terraform bool as synthesized: true/false, or their strings."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise UnsupportedTerraform(f"{value!r} is not a boolean")


def _template(block: Any) -> dict[str, Any]:
    lt = _fields(_one(block), ("id", "version"), "launch_template")
    return {"LaunchTemplateId": lt["id"], "Version": str(lt.get("version", "$Default"))}


def _mixed_policy(block: Any) -> dict[str, Any]:
    policy = _fields(_one(block), ("instances_distribution", "launch_template"), "mixed_instances_policy")
    dist = _fields(
        _one(policy["instances_distribution"]),
        ("on_demand_base_capacity", "on_demand_percentage_above_base_capacity", "spot_allocation_strategy"),
        "mixed_instances_policy.instances_distribution",
    )
    base, above = (
        int(dist.get("on_demand_base_capacity", 0)),
        int(dist.get("on_demand_percentage_above_base_capacity", 100)),
    )
    if (base, above, dist.get("spot_allocation_strategy")) != (0, 0, SPOT_STRATEGY):
        raise UnsupportedTerraform(
            f"mixed_instances_policy: only an all-Spot {SPOT_STRATEGY} distribution is modelled "
            f"(on_demand_base_capacity 0, on_demand_percentage_above_base_capacity 0), got {dist}"
        )
    template = _fields(
        _one(policy["launch_template"]),
        ("launch_template_specification", "override"),
        "mixed_instances_policy.launch_template",
    )
    spec = _fields(
        _one(template["launch_template_specification"]),
        ("launch_template_id", "version"),
        "mixed_instances_policy.launch_template.launch_template_specification",
    )
    overrides = [
        {"InstanceType": _fields(o, ("instance_type",), "mixed_instances_policy override")["instance_type"]}
        for o in template.get("override", [])
    ]
    return {
        "InstancesDistribution": {
            "OnDemandBaseCapacity": base,
            "OnDemandPercentageAboveBaseCapacity": above,
            "SpotAllocationStrategy": SPOT_STRATEGY,
        },
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {
                "LaunchTemplateId": spec["launch_template_id"],
                "Version": str(spec.get("version", "$Default")),
            },
            "Overrides": overrides,
        },
    }


def _hook(group: str, block: Mapping[str, Any]) -> dict[str, Any]:
    hook = _fields(block, HOOK_FIELDS, "initial_lifecycle_hook")
    # Imported here: localaws/__init__ imports this module, and moto must not be imported before
    # localaws/authserver.py has set INITIAL_NO_AUTH_ACTION_COUNT (moto.settings reads it once, at import).
    from localaws.autoscaling import TERMINATING

    if hook["lifecycle_transition"] != TERMINATING:
        raise UnsupportedTerraform(f"initial_lifecycle_hook {hook['name']}: only {TERMINATING} hooks are modelled")
    return {
        "AutoScalingGroupName": group,
        "LifecycleHookName": hook["name"],
        "LifecycleTransition": hook["lifecycle_transition"],
        "HeartbeatTimeout": int(hook.get("heartbeat_timeout", 3600)),  # PutLifecycleHook's default
        "DefaultResult": hook.get("default_result", "ABANDON"),
    }


def _warm_pool(group: str, block: Any) -> dict[str, Any]:
    pool = _fields(
        _one(block), ("pool_state", "min_size", "max_group_prepared_capacity", "instance_reuse_policy"), "warm_pool"
    )
    out: dict[str, Any] = {"AutoScalingGroupName": group, "PoolState": pool.get("pool_state", "Stopped")}
    if "min_size" in pool:
        out["MinSize"] = int(pool["min_size"])
    if "max_group_prepared_capacity" in pool:
        out["MaxGroupPreparedCapacity"] = int(pool["max_group_prepared_capacity"])
    if "instance_reuse_policy" in pool:
        reuse = _fields(_one(pool["instance_reuse_policy"]), ("reuse_on_scale_in",), "instance_reuse_policy")
        out["InstanceReusePolicy"] = {"ReuseOnScaleIn": _flag(reuse.get("reuse_on_scale_in", False))}
    return out


@creator(
    "aws_autoscaling_group",
    "name",
    "min_size",
    "max_size",
    "desired_capacity",
    "availability_zones",
    "vpc_zone_identifier",
    "launch_template",
    "mixed_instances_policy",
    "capacity_rebalance",
    "protect_from_scale_in",
    "warm_pool",
    "initial_lifecycle_hook",
    "tag",
    "health_check_type",
    "health_check_grace_period",
    "termination_policies",
    "suspended_processes",
    "enabled_metrics",
    "metrics_granularity",
)
def _autoscaling_group(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    asg = c("autoscaling")
    name = a["name"]
    if ("launch_template" in a) == ("mixed_instances_policy" in a):
        raise UnsupportedTerraform(
            f"aws_autoscaling_group {name}: exactly one of launch_template, mixed_instances_policy"
        )
    if ("availability_zones" in a) == ("vpc_zone_identifier" in a):
        raise UnsupportedTerraform(
            f"aws_autoscaling_group {name}: exactly one of availability_zones, vpc_zone_identifier"
        )
    hooks = [_hook(name, h) for h in a.get("initial_lifecycle_hook", [])]  # all checked before anything is created
    if a.get("health_check_type", "EC2") not in HEALTH_CHECK_TYPES:
        raise UnsupportedTerraform(
            f"aws_autoscaling_group {name}: health_check_type {a['health_check_type']!r} is not modelled"
        )
    if list(a.get("termination_policies", ["Default"])) not in TERMINATION_POLICIES:
        raise UnsupportedTerraform(f"aws_autoscaling_group {name}: only the Default termination policy is modelled")
    suspended = sorted(a.get("suspended_processes", []))
    if set(suspended) - SUSPENDABLE:
        raise UnsupportedTerraform(
            f"aws_autoscaling_group {name}: suspending {suspended} is not modelled (AZRebalance only)"
        )
    pool = _warm_pool(name, a["warm_pool"]) if "warm_pool" in a else None
    tags = [
        {
            "Key": t["key"],
            "Value": t["value"],
            "PropagateAtLaunch": _flag(t.get("propagate_at_launch", False)),
            "ResourceId": name,
            "ResourceType": "auto-scaling-group",
        }
        for t in (_fields(t, ("key", "value", "propagate_at_launch"), "tag") for t in a.get("tag", []))
    ]
    kwargs: dict[str, Any] = {
        "AutoScalingGroupName": name,
        "MinSize": 0,
        "MaxSize": int(a["max_size"]),
        "DesiredCapacity": 0,
        "CapacityRebalance": _flag(a.get("capacity_rebalance", False)),
        "NewInstancesProtectedFromScaleIn": _flag(a.get("protect_from_scale_in", False)),
        "HealthCheckType": a.get("health_check_type", "EC2"),
        # The provider's default (Terraform docs: health_check_grace_period, default 300).
        "HealthCheckGracePeriod": int(a.get("health_check_grace_period", 300)),
        "TerminationPolicies": ["Default"],
        "Tags": tags,
    }
    if "availability_zones" in a:
        kwargs["AvailabilityZones"] = list(a["availability_zones"])
    else:
        kwargs["VPCZoneIdentifier"] = ",".join(a["vpc_zone_identifier"])
    if "launch_template" in a:
        kwargs["LaunchTemplate"] = _template(a["launch_template"])
    else:
        kwargs["MixedInstancesPolicy"] = _mixed_policy(a["mixed_instances_policy"])
    asg.create_auto_scaling_group(**kwargs)
    if suspended:
        asg.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=suspended)
    if a.get("enabled_metrics"):
        asg.enable_metrics_collection(
            AutoScalingGroupName=name,
            Metrics=list(a["enabled_metrics"]),
            Granularity=a.get("metrics_granularity", "1Minute"),
        )
    for hook in hooks:
        asg.put_lifecycle_hook(**hook)
    min_size = int(a.get("min_size", 0))
    # No desired_capacity: AWS starts the group at its MinSize.
    asg.update_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=min_size, DesiredCapacity=int(a.get("desired_capacity", min_size))
    )
    if pool is not None:
        asg.put_warm_pool(**pool)
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return {
        "id": name,
        "name": name,
        "arn": group["AutoScalingGroupARN"],
        "min_size": min_size,
        "max_size": int(a["max_size"]),
        "availability_zones": group["AvailabilityZones"],
    }
