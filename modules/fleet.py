"""Fleet mode's GPU hosts: an EC2 Auto Scaling group of 0..max_size instances from the create mode's launch template
(modules/host_template.py), and the grants that scope the controller, the hosts and the API to it.

AWS's engine does the scaling; we only say how much. The controller (functions/shutdown) sets the group's desired
capacity from the backlog (core/fleet.py); Auto Scaling chooses which instance starts or leaves, with its own
service-linked role, so no runtime role here may start, stop or terminate an EC2 instance directly.

- On demand: a warm pool of Stopped instances, returned to it on scale-in (ReuseOnScaleIn), so a scale-out starts a
  stopped instance with its disk (drivers, weights, caches) instead of a fresh launch. Without MaxGroupPreparedCapacity
  the pool holds MaxSize minus the desired capacity ("If a value for MaxGroupPreparedCapacity is not specified,
  Amazon EC2 Auto Scaling launches and maintains the difference between the group's maximum capacity and its desired
  capacity", PutWarmPool: https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_PutWarmPool.html): every
  instance the group may need is prepared once and then only started and stopped.
- Spot: a mixed instances policy, all Spot above a base of 0, capacity-optimized (launches from the Spot pools with
  the most spare capacity, so the fewest interruptions: https://docs.aws.amazon.com/autoscaling/ec2/userguide/
  allocation-strategies.html), with capacity rebalancing (a replacement is launched when EC2 signals an
  elevated risk of interruption: https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-capacity-
  rebalancing.html). AWS refuses a warm pool here: PutWarmPool "cannot be called on an Auto Scaling group that has a
  mixed instances policy or a launch template or launch configuration that requests Spot Instances" (same page), so
  every Spot scale-out is a fresh launch from the AMI: minutes instead of well under a minute.

The group's settings that decide whether a busy instance can be taken away, each against AWS's documentation:
- The adapter protects its instance from scale-in while any slot runs a task and clears it when idle (adapter/): a
  scale-in never takes a protected instance ("the Auto Scaling group can't terminate the required number of
  instances until their instance scale in protection settings are disabled", "Use instance scale-in protection":
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html). New instances
  start unprotected (protect_from_scale_in false; "When Amazon EC2 Auto Scaling launches a new instance or moves an
  instance from a warm pool into the Auto Scaling group, the instance inherits the instance scale-in protection
  setting of the group", same page): an instance whose adapter never comes up holds no protection, so the
  controller's backstop can still take it away.
- AZRebalance is suspended. Idle members leave one by one (the desired capacity lowered by one), and as after a
  TerminateInstanceInAutoScalingGroup with the capacity decremented, "your Auto Scaling group can become unbalanced
  between Availability Zones. Amazon EC2 Auto Scaling tries to rebalance the group, and rebalancing might terminate
  instances in other zones"
  (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_TerminateInstanceInAutoScalingGroup.html), after
  launching a new one first. Scale-in protection covers scale-in; a rebalance would launch a GPU nobody asked for and
  take one that may be running tasks. With it suspended, scale-out and scale-in still balance the zones ("If you
  suspend AZRebalance and a scale out or scale in event occurs, the scaling process still tries to balance the
  Availability Zones": https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-suspend-resume-processes.html).
- The Default termination policy: only unprotected, so idle, instances are ever candidates, and among them Default
  keeps the zones balanced and takes the oldest launch template first, so a new AMI or bootstrap reaches the fleet
  as instances leave (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-termination-policies.html).
- EC2 health checks with AWS's 300 s grace period: an instance that stops without the group (a bare poweroff, a
  failed host) is replaced (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html);
  the adapter's idle stop goes through the group instead, so the instance returns to the warm pool.
- No default cooldown setting: it applies to simple scaling policies (there are none) and to SetDesiredCapacity only
  with HonorCooldown, which the controller does not ask for ("By default, SetDesiredCapacity overrides any cooldown
  period", https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html).
- A termination lifecycle hook (initial_lifecycle_hook, created with the group) holds a leaving instance in
  Terminating:Wait until its adapter has handed its tasks back and completed the action, or for the heartbeat
  timeout; then it CONTINUEs (https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks.html).
- No desired_capacity: the controller owns it (lifecycle ignore_changes), so an apply never resets a busy fleet.
- Tags are tag blocks that propagate at launch: the provider's default_tags do not reach Auto Scaling groups
  (https://www.hashicorp.com/blog/default-tags-in-the-terraform-aws-provider).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cdktf import TerraformResourceLifecycle, Token
from constructs import Construct

from modules.config import INSTANCE_TYPE, MAX_SPOT_TYPES, RANGES, SUBNET_ID, EnvironmentConfig
from modules.gpu import DESCRIBE_ACTIONS, REBOOT_ACTIONS, render_bootstrap
from modules.host_template import ENVIRONMENT_TAG, HostSpec, HostTemplate
from modules.iam import Role, Statement, arn
from modules.props import check, check_actions, check_pattern, check_range

FLEET = "gpu-fleet"  # the group's base name (EnvironmentConfig.name_of adds the suffix); also its template's
HANDBACK = "handback"  # its termination hook is <group>-handback
# Which Auto Scaling actions take the group as their resource, and which only "*": the Service Authorization
# Reference for Amazon EC2 Auto Scaling (https://docs.aws.amazon.com/service-authorization/latest/reference/
# list_amazonec2autoscaling.html) lists the autoScalingGroup resource for SetDesiredCapacity, SetInstanceProtection,
# CompleteLifecycleAction, RecordLifecycleActionHeartbeat and TerminateInstanceInAutoScalingGroup, and none for the
# Describe* calls ("Because Describe actions do not support resource-level permissions, you must specify them in a
# separate statement without conditions": https://docs.aws.amazon.com/autoscaling/ec2/userguide/
# ec2-auto-scaling-launch-template-permissions.html).
SCALE_ACTIONS = ("autoscaling:SetDesiredCapacity",)
# A stuck worker (functions/shutdown): the member is rebooted once, then marked unhealthy, which makes the group
# replace it (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceHealth.html).
RECOVER_ACTIONS = ("autoscaling:SetInstanceHealth",)
# Auto Scaling tags every instance it launches with the group's name (aws:autoscaling:groupName): the reboot is
# scoped to the group's members by that tag.
GROUP_TAG = "aws:autoscaling:groupName"
# The controller reads the group and its members (DescribeAutoScalingGroups), the warm pool (DescribeWarmPool: its
# instances are not among the group's), an instance's group state (DescribeAutoScalingInstances) and, through EC2,
# the members' launch times (DescribeInstances).
CONTROLLER_DESCRIBE_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeWarmPool",
)
# A GPU host: protection while busy, the hand-back hook, and leaving through the group when idle: protection off,
# then the desired capacity down by one, so the group scales in an idle member back into the warm pool
# (TerminateInstanceInAutoScalingGroup would terminate it: "You can't connect to or start an instance after you've
# terminated it", https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_TerminateInstanceInAutoScalingGroup.html;
# the reuse policy applies on scale-in only: https://docs.aws.amazon.com/autoscaling/ec2/APIReference/
# API_InstanceReusePolicy.html). SetInstanceProtection "cannot be called on instances in a warm pool" (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/
# API_SetInstanceProtection.html). These are authorized on the group, not the instance: IAM has no key that ties the
# instance named in the request to the caller's own, so a host could address another member of its group, and only
# of its group.
MEMBER_ACTIONS = (
    "autoscaling:CompleteLifecycleAction",
    "autoscaling:RecordLifecycleActionHeartbeat",
    "autoscaling:SetInstanceProtection",
    "autoscaling:SetDesiredCapacity",
)
# Its own lifecycle state and protection; the group's desired capacity and MinSize before it lowers the first.
MEMBER_DESCRIBE_ACTIONS = ("autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups")
# The API's /healthz: the group's members and their states, and the instances behind them.
API_DESCRIBE_ACTIONS = ("autoscaling:DescribeAutoScalingGroups",)
SUSPENDED_PROCESSES = ("AZRebalance",)
GROUP_METRICS = ("GroupDesiredCapacity", "GroupInServiceInstances")
TERMINATION_POLICIES = ("Default",)
HEALTH_CHECK_TYPE, HEALTH_CHECK_GRACE_SECONDS = "EC2", 300
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
POOL_STATE = "Stopped"
SPOT_ALLOCATION = "capacity-optimized"
# PutLifecycleHook: LifecycleHookName 1-255 characters of A-Za-z0-9-_/ (https://docs.aws.amazon.com/autoscaling/ec2/
# APIReference/API_PutLifecycleHook.html); the group name is checked against the launch template's stricter rule.
HOOK_NAME = re.compile(r"[A-Za-z0-9\-_/]{1,255}")


def group_arn(name: str, *, region: str, account: str) -> str:
    """The group's ARN as IAM matches it, by name: arn:aws:autoscaling:<region>:<account>:autoScalingGroup:<uuid>:
    autoScalingGroupName/<name> with the uuid (assigned at creation) wildcarded (Service Authorization Reference,
    Amazon EC2 Auto Scaling, resource type autoScalingGroup). A name-scoped grant can be written before the group
    exists, so the roles' stack needs nothing from the GPU stack."""
    return arn("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{name}", region=region, account=account)


def hook_name_of(group_name: str) -> str:
    return f"{group_name}-{HANDBACK}"


def fleet_for(config: EnvironmentConfig) -> FleetGroup:
    """The environment's fleet for grants (fleet mode), by the name GpuFleet.from_config gives its group."""
    return FleetGroup(name=config.name_of(FLEET), region=config.region, account=config.account)


class FleetGroup:
    """Not a Construct: it creates nothing, it only scopes grants to one Auto Scaling group, by name.

    Args:
        name: the group's name (1-255 characters; AWS's CreateAutoScalingGroup). Required.
        region, account: where it runs. Required.

    Attributes: name, arn (the name-scoped ARN pattern of `group_arn`), hook_name.
    """

    def __init__(self, *, name: str, region: str, account: str) -> None:
        check(FleetGroup.__name__, "name", name, 1 <= len(name) <= 255, "is not 1-255 characters (group name)")
        self.name, self.hook_name = name, hook_name_of(name)
        self.arn = group_arn(name, region=region, account=account)

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (autoscaling:*) on this group only."""
        return [grantee.add(check_actions(FleetGroup.__name__, actions, "autoscaling"), [self.arn])]

    def grant_scale(self, role: Role) -> list[Statement]:
        """The controller: set the group's desired capacity, and read the group, its warm pool and instances."""
        return [*self.grant(role, *SCALE_ACTIONS), role.add((*CONTROLLER_DESCRIBE_ACTIONS, *DESCRIBE_ACTIONS), ["*"])]

    def grant_recover(self, role: Role, *, region: str, account: str) -> list[Statement]:
        """The controller's stuck-worker steps: reboot a member (by the group's tag), mark it unhealthy."""
        members = arn("ec2", "instance/*", region=region, account=account)
        reboot = role.add(
            REBOOT_ACTIONS, [members], conditions={"StringEquals": {f"aws:ResourceTag/{GROUP_TAG}": self.name}}
        )
        return [*self.grant(role, *RECOVER_ACTIONS), reboot]

    def grant_member(self, role: Role) -> list[Statement]:
        """A GPU host of the group: its protection, its lifecycle actions, leaving through the group."""
        return [*self.grant(role, *MEMBER_ACTIONS), role.add(MEMBER_DESCRIBE_ACTIONS, ["*"])]

    def grant_describe(self, role: Role) -> list[Statement]:
        """The API's /healthz: the group's instances and their states (read-only, "*": Describe* only)."""
        return [role.add((*API_DESCRIBE_ACTIONS, *DESCRIBE_ACTIONS), ["*"])]


class GpuFleet(Construct):
    """The GPU fleet of one environment: a launch template (IMDSv2, encrypted gp3, no ingress, the bootstrap as user
    data) and an Auto Scaling group from it, with a warm pool on demand or a Spot mixed instances policy, and a
    termination lifecycle hook (see the module docstring for every setting and why).

    Args:
        name: the group's name, also the launch template's and security group's (3-128 of A-Za-z0-9().-/_,
            CreateLaunchTemplate; the hook `<name>-handback` must fit PutLifecycleHook's A-Za-z0-9-_/). Required.
        host: who the hosts are and what they run on (modules/host_template.py HostSpec: environment, release
            prefix, region, account, instance profile, and the launch template's instance type (the on-demand
            group's), root volume, AMI parameter and root device). Required.
        max_size: the group's MaxSize, 1..100 (modules/config.py fleet_max_size). Default 1.
        slots: tasks per instance, one per GPU, 1..8 (gpus_per_instance). Default 1.
        spot: a Spot mixed instances policy (no warm pool) instead of on demand with a warm pool. Default False.
        spot_instance_types: spot only: the policy's overrides, 1..40 distinct types. Default (host.instance_type,).
        handback_timeout_seconds: the termination hook's heartbeat timeout, 30..7200 s (PutLifecycleHook).
            Default 300.
        subnet_ids: the subnets to launch into (VPCZoneIdentifier; the security group goes in the first one's VPC),
            each subnet-<hex>. Default (): every available Availability Zone of the region's default VPC.

    Attributes: name, arn (the group's real ARN, a token), hook_name, slots, max_size, spot, group (the
    aws_autoscaling_group), launch_template, security_group, script (the rendered bootstrap), scope (FleetGroup:
    the grants, by name).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        host: HostSpec,
        max_size: int = 1,
        slots: int = 1,
        spot: bool = False,
        spot_instance_types: Sequence[str] = (),
        handback_timeout_seconds: int = 300,
        subnet_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", hook_name_of(name), HOOK_NAME, "a name whose hook fits A-Za-z0-9-_/ (1-255)")
        host.check(self)
        self._check(max_size, slots, spot, spot_instance_types)
        check_range(self, "handback_timeout_seconds", handback_timeout_seconds, 30, 7200, "PutLifecycleHook")
        for subnet in subnet_ids:
            check_pattern(self, "subnet_ids", subnet, SUBNET_ID, "a subnet id (subnet-0123456789abcdef0)")
        check(self, "subnet_ids", tuple(subnet_ids), len(set(subnet_ids)) == len(subnet_ids), "lists a subnet twice")
        self.name, self.hook_name = name, hook_name_of(name)
        self.slots, self.max_size, self.spot = slots, max_size, spot
        self.scope = FleetGroup(name=name, region=host.region, account=host.account)
        self.script = render_bootstrap(
            environment=host.environment, parameter_prefix=host.parameter_prefix, region=host.region
        )
        # Imported here: only fleet mode builds a group, so the other modes' synths never load these bindings.
        from cdktf_cdktf_provider_aws.autoscaling_group import (
            AutoscalingGroup,
            AutoscalingGroupInitialLifecycleHook,
            AutoscalingGroupTag,
        )
        from cdktf_cdktf_provider_aws.data_aws_subnet import DataAwsSubnet

        vpc_id = DataAwsSubnet(self, "subnet", id=subnet_ids[0]).vpc_id if subnet_ids else None
        template = HostTemplate(self, name=name, host=host, user_data=self.script, vpc_id=vpc_id)
        self.launch_template, self.security_group = template.launch_template, template.security_group
        version = Token.as_string(self.launch_template.latest_version)
        where = self._placement(subnet_ids)
        if spot:
            purchase = self._spot(version, tuple(spot_instance_types) or (host.instance_type,))
        else:
            purchase = self._on_demand(version)
        self.group = AutoscalingGroup(
            self,
            "group",
            name=name,
            min_size=0,
            max_size=max_size,
            **where,
            **purchase,
            protect_from_scale_in=False,
            suspended_processes=list(SUSPENDED_PROCESSES),
            # The dashboard graphs these (AWS/AutoScaling publishes group metrics only when enabled; free at 1 min).
            enabled_metrics=list(GROUP_METRICS),
            metrics_granularity="1Minute",
            termination_policies=list(TERMINATION_POLICIES),
            health_check_type=HEALTH_CHECK_TYPE,
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            initial_lifecycle_hook=[
                AutoscalingGroupInitialLifecycleHook(
                    name=self.hook_name,
                    lifecycle_transition=TERMINATING,
                    heartbeat_timeout=handback_timeout_seconds,
                    default_result="CONTINUE",
                )
            ],
            tag=[
                AutoscalingGroupTag(key=key, value=value, propagate_at_launch=True)
                for key, value in ((ENVIRONMENT_TAG, host.environment), ("Name", name))
            ],
            lifecycle=TerraformResourceLifecycle(ignore_changes=["desired_capacity"]),
        )
        self.arn: str = self.group.arn

    def _check(self, max_size: int, slots: int, spot: bool, spot_types: Sequence[str]) -> None:
        check_range(self, "max_size", max_size, *RANGES["fleet_max_size"], "modules/config.py fleet_max_size")
        check_range(self, "slots", slots, *RANGES["gpus_per_instance"], "GPUs of one instance type")
        check(self, "spot_instance_types", tuple(spot_types), spot or not spot_types, "is for spot=True only")
        check_range(self, "spot_instance_types", len(spot_types), 0, MAX_SPOT_TYPES, "count; a mixed instances policy")
        for instance_type in spot_types:
            check_pattern(self, "spot_instance_types", instance_type, INSTANCE_TYPE, "an EC2 instance type")
        distinct = len(set(spot_types)) == len(spot_types)
        check(self, "spot_instance_types", tuple(spot_types), distinct, "lists an instance type twice")

    def _placement(self, subnet_ids: Sequence[str]) -> dict[str, object]:
        """Where to launch: the given subnets, or every Availability Zone of the region that is available now (the
        default VPC's subnets there)."""
        if subnet_ids:
            return {"vpc_zone_identifier": list(subnet_ids)}
        from cdktf_cdktf_provider_aws.data_aws_availability_zones import DataAwsAvailabilityZones

        zones = DataAwsAvailabilityZones(self, "zones", state="available")
        return {"availability_zones": Token.as_list(zones.names)}

    def _on_demand(self, version: str) -> dict[str, object]:
        from cdktf_cdktf_provider_aws.autoscaling_group import (
            AutoscalingGroupLaunchTemplate,
            AutoscalingGroupWarmPool,
            AutoscalingGroupWarmPoolInstanceReusePolicy,
        )

        return {
            "launch_template": AutoscalingGroupLaunchTemplate(id=self.launch_template.id, version=version),
            "warm_pool": AutoscalingGroupWarmPool(
                pool_state=POOL_STATE,
                min_size=0,
                instance_reuse_policy=AutoscalingGroupWarmPoolInstanceReusePolicy(reuse_on_scale_in=True),
            ),
        }

    def _spot(self, version: str, instance_types: Sequence[str]) -> dict[str, object]:
        from cdktf_cdktf_provider_aws.autoscaling_group import (
            AutoscalingGroupMixedInstancesPolicy,
            AutoscalingGroupMixedInstancesPolicyInstancesDistribution,
            AutoscalingGroupMixedInstancesPolicyLaunchTemplate,
            AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification,
            AutoscalingGroupMixedInstancesPolicyLaunchTemplateOverride,
        )

        specification = AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification(
            launch_template_id=self.launch_template.id, version=version
        )
        policy = AutoscalingGroupMixedInstancesPolicy(
            instances_distribution=AutoscalingGroupMixedInstancesPolicyInstancesDistribution(
                on_demand_base_capacity=0,
                on_demand_percentage_above_base_capacity=0,
                spot_allocation_strategy=SPOT_ALLOCATION,
            ),
            launch_template=AutoscalingGroupMixedInstancesPolicyLaunchTemplate(
                launch_template_specification=specification,
                override=[
                    AutoscalingGroupMixedInstancesPolicyLaunchTemplateOverride(instance_type=t) for t in instance_types
                ],
            ),
        )
        return {"mixed_instances_policy": policy, "capacity_rebalance": True}

    @classmethod
    def from_config(
        cls, scope: Construct, id: str, *, config: EnvironmentConfig, instance_profile_name: str
    ) -> GpuFleet:
        """The environment's fleet as its config describes it (modules/config.py, gpu_mode = "fleet")."""
        return cls(
            scope,
            id,
            name=config.name_of(FLEET),
            host=HostSpec.from_config(config, instance_profile_name=instance_profile_name),
            max_size=config.fleet_max_size,
            slots=config.gpus_per_instance,
            spot=config.fleet_spot,
            spot_instance_types=config.spot_instance_types,
            handback_timeout_seconds=config.handback_timeout_seconds,
            subnet_ids=config.fleet_subnet_ids,
        )

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (autoscaling:*) on this group."""
        return self.scope.grant(grantee, *actions)

    def grant_scale(self, role: Role) -> list[Statement]:
        return self.scope.grant_scale(role)

    def grant_member(self, role: Role) -> list[Statement]:
        return self.scope.grant_member(role)

    def grant_describe(self, role: Role) -> list[Statement]:
        return self.scope.grant_describe(role)
