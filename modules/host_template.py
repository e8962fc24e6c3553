"""The launch template every created GPU host starts from, with its security group and AMI lookup: create mode's
instances (modules/gpu.py GpuHost) and fleet mode's Auto Scaling group (modules/fleet.py GpuFleet) build it here.

IMDSv2 only with one hop, an encrypted gp3 root, no inbound traffic, the environment's tag on the instances and
their volumes, and the rendered bootstrap (modules/gpu.py render_bootstrap) as user data. What the hosts are and
run on, the same in every mode, is one props object, `HostSpec`, built once from the environment's config.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from constructs import Construct

from modules.config import DEFAULT_AMI_PARAMETER, INSTANCE_TYPE, PARAMETER_NAME, EnvironmentConfig
from modules.iam import PROFILE_NAME
from modules.props import check, check_pattern, check_range
from modules.rollout import PARAMETER_PREFIX

if TYPE_CHECKING:
    from cdktf_cdktf_provider_aws.launch_template import LaunchTemplateBlockDeviceMappings
    from cdktf_cdktf_provider_aws.security_group import SecurityGroupEgress

# The tag that marks an environment's created instances (and their volumes). StartInstances and StopInstances take
# the instance resource with the aws:ResourceTag/${TagKey} condition key (Service Authorization Reference, Amazon EC2:
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html; the IAM User Guide's
# example "Allows starting or stopping EC2 instances a user has tagged":
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_examples_ec2_tag-owner.html).
ENVIRONMENT_TAG = "gpu-orchestrator:environment"
# EC2 RunInstances: "User data is limited to 16 KB, in raw form, before it is base64-encoded"
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html).
USER_DATA_LIMIT = 16384
# CreateLaunchTemplate: 3-128 characters of a-zA-Z0-9().-/_ ; security group names: up to 255 characters.
HOST_NAME = re.compile(r"[A-Za-z0-9().\-/_]{3,128}")
HOST_NAME_RULE = "3-128 of A-Za-z0-9().-/_ (CreateLaunchTemplate)"
MAX_VOLUME_GB = 16384  # EBS gp3: 1..16384 GiB
ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a tag value here: our environment names' rule
# What only a launch uses (create and fleet mode): adopt mode launches nothing and refuses them set.
LAUNCH_SETTINGS = ("instance_type", "root_volume_gb", "ami_parameter", "root_device_name")


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    """Who the GPU hosts of one environment are and what they run on: the props GpuHost (modules/gpu.py) and GpuFleet
    (modules/fleet.py) share, and what HostTemplate launches from. Built once from the config (`from_config`); the
    construct that takes it runs `check` first, so a refusal names that construct: `<path>: root_volume_gb=16385 is
    outside 1..16384 (EBS gp3 volume size, GiB)`.

    Fields:
        environment: the environment's name, the value of ENVIRONMENT_TAG (1-64 of A-Za-z0-9_.-). Required.
        parameter_prefix: AdapterRelease's (its release is under <prefix>/adapter/; "/"-separated SSM levels).
            Required.
        region, account: where the hosts run. Required.
        instance_profile_name: the profile the hosts run with (IAM: 1-128 of A-Za-z0-9+=,.@_-). Required.
        instance_type: launches only: <family>.<size>. Default "g5.xlarge".
        root_volume_gb: launches only: the encrypted gp3 root, 1..16384 GiB (EBS gp3). Default 100.
        ami_parameter: launches only: the SSM parameter naming the AMI (/a/b/c). Default DEFAULT_AMI_PARAMETER.
        root_device_name: launches only: the AMI's root device, resized to root_volume_gb. Default "/dev/sda1" (the
            Ubuntu Deep Learning AMIs'; Amazon Linux uses /dev/xvda).
    """

    environment: str
    parameter_prefix: str
    region: str
    account: str
    instance_profile_name: str
    instance_type: str = "g5.xlarge"
    root_volume_gb: int = 100
    ami_parameter: str = DEFAULT_AMI_PARAMETER
    root_device_name: str = "/dev/sda1"

    @classmethod
    def from_config(cls, config: EnvironmentConfig, *, instance_profile_name: str) -> HostSpec:
        """The hosts `config` describes (its launch settings are its defaults unless gpu_mode launches)."""
        return cls(
            environment=config.name,
            parameter_prefix=config.parameter_prefix,
            region=config.region,
            account=config.account,
            instance_profile_name=instance_profile_name,
            instance_type=config.instance_type,
            root_volume_gb=config.root_volume_gb,
            ami_parameter=config.ami_parameter,
        )

    def check(self, scope: Construct) -> None:
        """Refuse, naming `scope` (the construct taking these props), any field outside its limit."""
        check_pattern(scope, "environment", self.environment, ENVIRONMENT_NAME, "1-64 of A-Za-z0-9_.- (tag value)")
        check_pattern(scope, "parameter_prefix", self.parameter_prefix, PARAMETER_PREFIX, '"/"-separated SSM levels')
        profile = self.instance_profile_name
        check_pattern(scope, "instance_profile_name", profile, PROFILE_NAME, "1-128 of A-Za-z0-9+=,.@_-")
        check_pattern(scope, "instance_type", self.instance_type, INSTANCE_TYPE, "an EC2 instance type (g5.xlarge)")
        check_range(scope, "root_volume_gb", self.root_volume_gb, 1, MAX_VOLUME_GB, "EBS gp3 volume size, GiB")
        check_pattern(scope, "ami_parameter", self.ami_parameter, PARAMETER_NAME, "an SSM parameter name (/a/b/c)")

    def launch_settings_set(self) -> tuple[str, ...]:
        """The LAUNCH_SETTINGS that differ from their defaults (what adopt mode refuses)."""
        defaults = {f.name: f.default for f in fields(self)}
        return tuple(p for p in LAUNCH_SETTINGS if getattr(self, p) != defaults[p])


class HostTemplate:
    """Not a Construct: it adds its resources to `scope`, the construct that owns the hosts, so their Terraform
    addresses are that construct's (`<scope>_launch-template_...`) and create mode's stay what they always were.

    Args:
        scope: the construct the resources belong to; its path names every refusal. Required.
        name: the security group's and the launch template's name (3-128 of A-Za-z0-9().-/_). Required.
        host: the hosts' HostSpec (its environment tags the instances and volumes; the rest is the launch), which
            `scope` has checked. Required.
        user_data: the script the hosts run at first boot, at most 16384 bytes (EC2). Required.
        vpc_id: the security group's VPC (a literal or a reference). Default None: the region's default VPC.

    Attributes: security_group, ami, launch_template (the resources).
    """

    def __init__(
        self, scope: Construct, *, name: str, host: HostSpec, user_data: str, vpc_id: str | None = None
    ) -> None:
        check_pattern(scope, "name", name, HOST_NAME, HOST_NAME_RULE)
        size = len(user_data.encode())
        check(scope, "user_data", size, size <= USER_DATA_LIMIT, f"bytes exceed EC2's {USER_DATA_LIMIT} (user data)")
        # Imported here: only create and fleet mode build a template, so adopt-mode synths never load these bindings.
        from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
        from cdktf_cdktf_provider_aws.launch_template import (
            LaunchTemplate,
            LaunchTemplateIamInstanceProfile,
            LaunchTemplateMetadataOptions,
            LaunchTemplateTagSpecifications,
        )
        from cdktf_cdktf_provider_aws.security_group import SecurityGroup

        tags = {ENVIRONMENT_TAG: host.environment}
        self.security_group = SecurityGroup(
            scope,
            "security-group",
            name=name,
            description="GPU adapter hosts: no inbound; HTTPS out to the AWS endpoints (SSM, S3, SQS, DynamoDB)",
            vpc_id=vpc_id,
            ingress=[],  # managed as empty: a rule added by hand is removed by the next apply
            egress=[_https_out()],
            tags=tags,
        )
        self.ami = DataAwsSsmParameter(scope, "ami", name=host.ami_parameter)
        self.launch_template = LaunchTemplate(
            scope,
            "launch-template",
            name=name,
            image_id=self.ami.insecure_value,  # an AMI id is no secret: the plan shows which one
            instance_type=host.instance_type,
            update_default_version=True,
            block_device_mappings=[_root_volume(host.root_device_name, host.root_volume_gb)],
            # IMDSv2 only, and one hop: a container on the host cannot reach the instance role's credentials
            # (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-IMDS-new-instances.html).
            metadata_options=LaunchTemplateMetadataOptions(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            iam_instance_profile=LaunchTemplateIamInstanceProfile(name=host.instance_profile_name),
            vpc_security_group_ids=[self.security_group.id],
            tag_specifications=[
                LaunchTemplateTagSpecifications(resource_type=kind, tags=tags) for kind in ("instance", "volume")
            ],
            user_data=base64.b64encode(user_data.encode()).decode(),
        )


def _https_out() -> SecurityGroupEgress:
    """Egress 443/tcp anywhere: the hosts reach SSM, S3, SQS and DynamoDB over their public HTTPS endpoints (DNS, IMDS
    and NTP at 169.254.169.x are not filtered by security groups). Inline rules list every attribute: Terraform's
    JSON form of these blocks has no defaults."""
    from cdktf_cdktf_provider_aws.security_group import SecurityGroupEgress

    return SecurityGroupEgress(
        description="HTTPS to AWS endpoints",
        protocol="tcp",
        from_port=443,
        to_port=443,
        cidr_blocks=["0.0.0.0/0"],
        ipv6_cidr_blocks=[],
        prefix_list_ids=[],
        security_groups=[],
        self_attribute=False,
    )


def _root_volume(device: str, size_gb: int) -> LaunchTemplateBlockDeviceMappings:
    from cdktf_cdktf_provider_aws.launch_template import (
        LaunchTemplateBlockDeviceMappings,
        LaunchTemplateBlockDeviceMappingsEbs,
    )

    ebs = LaunchTemplateBlockDeviceMappingsEbs(
        volume_size=size_gb, volume_type="gp3", encrypted="true", delete_on_termination="true"
    )
    return LaunchTemplateBlockDeviceMappings(device_name=device, ebs=ebs)
