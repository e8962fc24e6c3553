"""The GPU hosts: the instances the system starts and stops, and how each becomes an adapter host.

Two modes here (modules/config.py `gpu_mode`; the third, fleet, is modules/fleet.py GpuFleet):
- adopt: the instances exist (config gpu_instance_ids). An SSM association runs adapter/deploy/bootstrap.sh on
  exactly them; the instance profile is attached by hand (Terraform cannot attach one to an instance it does not
  manage), with the command `GpuHost.attach_profile_commands` spells out per instance.
- create: a launch template (modules/host_template.py: IMDSv2 only, encrypted gp3 root, no inbound traffic) and
  `aws_instance`s from it, tagged with the environment; the user data is the same bootstrap.sh.

Every mode runs one script, rendered once (`render_bootstrap`): bootstrap.sh with the environment's values and the
unit and install.sh inline, so the host needs nothing but the script to become an adapter host, and every change to
those files shows in the plan (the document's content or the template's user data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cdktf import TerraformResourceLifecycle, Token
from cdktf_cdktf_provider_aws.ssm_association import SsmAssociation, SsmAssociationTargets
from cdktf_cdktf_provider_aws.ssm_document import SsmDocument
from constructs import Construct

from modules.config import INSTANCE_ID, ROOT, EnvironmentConfig
from modules.host_template import ENVIRONMENT_TAG, USER_DATA_LIMIT, HostSpec, HostTemplate
from modules.iam import Role, Statement, arn, render
from modules.props import check, check_actions, check_in, check_pattern, check_range, fail

if TYPE_CHECKING:
    from cdktf_cdktf_provider_aws.instance import Instance

__all__ = ["ENVIRONMENT_TAG", "USER_DATA_LIMIT"]  # re-exported: the hosts' tag and EC2's user data limit

# DescribeInstances supports no resource-level permissions: AWS accepts only "*" for it.
DESCRIBE_ACTIONS = ("ec2:DescribeInstances",)
START_ACTIONS = ("ec2:StartInstances",)
STOP_ACTIONS = ("ec2:StopInstances",)
# The controller's first step with a stuck worker (functions/shutdown: a running GPU with work waiting and no sign of
# life from its adapter): one reboot before it stops the instance.
REBOOT_ACTIONS = ("ec2:RebootInstances",)
HOST_MODES = ("adopt", "create")  # GpuHost's; modules/config.py GPU_MODES adds fleet (modules/fleet.py)
BOOTSTRAP_DOCUMENT = "gpu-adapter-bootstrap"  # base names (EnvironmentConfig.name_of adds the suffix): the adopt
HOSTS = "gpu-adapter"  # mode's document; the create mode's security group, launch template and Name tags
DEPLOY = ROOT / "adapter" / "deploy"
BOOTSTRAP_FILES = ("gpu-adapter.service", "install.sh")
# The SSM agent's own calls, all on "*" in AmazonSSMManagedInstanceCore (which adds GetParameter(s) on every parameter,
# patching, compliance: https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AmazonSSMManagedInstanceCore.html;
# https://docs.aws.amazon.com/systems-manager/latest/userguide/systems-manager-setting-up-messageAPIs.html). "*" is
# required by ec2messages and ssmmessages (no resource types) and kept for the registration and association status
# calls, as AWS's policy does: a wrong narrowing leaves a host silently unmanaged. Only the document reads are narrowed
# (GetDocument, DescribeDocument take the document resource: Service Authorization Reference, AWS Systems Manager,
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_awssystemsmanager.html).
SSM_AGENT_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)
SSM_ASSOCIATION_ACTIONS = (
    "ssm:ListInstanceAssociations",
    "ssm:DescribeAssociation",
    "ssm:UpdateInstanceAssociationStatus",
    "ssm:PutInventory",
)
SSM_DOCUMENT_ACTIONS = ("ssm:GetDocument", "ssm:DescribeDocument")
# CreateDocument: 3-128 characters of a-zA-Z0-9_-. ; AWS reserves the prefixes aws, amazon and amzn (any case).
DOCUMENT_NAME = re.compile(r"[A-Za-z0-9_.-]{3,128}")
HEREDOC_END = "GPU_ADAPTER_PAYLOAD_END"


def render_bootstrap(*, environment: str, parameter_prefix: str, region: str) -> str:
    """bootstrap.sh with its parameters and the unit and install.sh inline (quoted heredocs: written byte for byte).
    Its own full-line comments are left out (they are for readers of the file; user data has 16 KB)."""
    release = f"{parameter_prefix}/adapter"
    lines = [
        "#!/bin/sh",
        f"# gpu-orchestrator {environment}: adapter/deploy/bootstrap.sh, rendered by modules/gpu.py render_bootstrap.",
        f"ADAPTER_SSM_PREFIX='{release}'",
        f"AWS_DEFAULT_REGION='{region}'",
        "GPU_ADAPTER_PAYLOAD=inline",
        "write_payload() {",
    ]
    for name in BOOTSTRAP_FILES:
        text = (DEPLOY / name).read_text()
        # Written byte for byte only if it ends in one newline and holds neither the heredoc's end nor SSM's
        # {{parameter}} nor Terraform's %{directive} syntax.
        if any(mark in text for mark in (HEREDOC_END, "{{", "%{")) or not text.endswith("\n") or text.endswith("\n\n"):
            raise ValueError(f"adapter/deploy/{name} cannot be inlined in the bootstrap")
        lines += [f"cat >\"$1/{name}\" <<'{HEREDOC_END}'", text.removesuffix("\n"), HEREDOC_END]
    lines.append("}")
    body = (DEPLOY / "bootstrap.sh").read_text().splitlines()[1:]
    lines += [line for line in body if not line.lstrip().startswith("#")]
    return "\n".join(lines) + "\n"


def terraform_literal(text: str) -> str:
    """`text` as a literal in Terraform JSON: "${" starts an interpolation and "%{" a directive there, so the
    unit's ${ADAPTER_PYTHON} and install.sh's ${VAR:-default} are escaped as "$${" (and "%%{") to reach AWS as
    written (Terraform language, "Strings and Templates", escape sequences:
    https://developer.hashicorp.com/terraform/language/expressions/strings#escape-sequences). cdktf's
    Fn.rawString also escapes quotes for HCL, which would corrupt JSON synthesized as JSON."""
    return text.replace("${", "$${").replace("%{", "%%{")


def bootstrap_document(script: str) -> dict[str, object]:
    """A Command document (schemaVersion 2.2) that runs `script` with aws:runShellScript: SSM joins runCommand's
    lines with newlines into one script (Systems Manager User Guide, aws:runShellScript:
    https://docs.aws.amazon.com/systems-manager/latest/userguide/documents-command-ssm-plugin-reference.html)."""
    step = {
        "action": "aws:runShellScript",
        "name": "bootstrap",
        "inputs": {"runCommand": script.splitlines(), "timeoutSeconds": 600},
    }
    return {"schemaVersion": "2.2", "description": "Install and start the GPU adapter.", "mainSteps": [step]}


def attach_profile_command(instance_id: str, profile_name: str) -> str:
    return (
        f"aws ec2 associate-iam-instance-profile --instance-id {instance_id} --iam-instance-profile Name={profile_name}"
    )


def grant_ssm_agent(role: Role, *, region: str, account: str, document_name: str | None = None) -> list[Statement]:
    """What the SSM agent on the hosts needs: register and talk to Systems Manager; with `document_name` (adopt
    mode) also run the association of that document (the name, not a reference: the role's stack comes first)."""
    added = [role.add(SSM_AGENT_ACTIONS, ["*"])]
    if document_name is not None:
        added.append(role.add(SSM_ASSOCIATION_ACTIONS, ["*"]))
        document = arn("ssm", f"document/{document_name}", region=region, account=account)
        added.append(role.add(SSM_DOCUMENT_ACTIONS, [document]))
    return added


# The adapter ships its metrics (EMF lines) here itself; CloudWatch extracts them on ingestion. A year, as for the
# functions' logs: a few lines a minute per host cost cents to keep.
METRICS_LOG_DAYS = 365
METRICS_LOG_ACTIONS = ("logs:CreateLogStream", "logs:PutLogEvents")


def adapter_metrics_group(config: EnvironmentConfig) -> str:
    """The adapter's metrics log group (METRICS_LOG_GROUP), by name: the iam and artifacts stacks name it before the
    gpu stack creates it."""
    return f"/gpu-orchestrator/adapter-metrics{config.suffix}"


def bootstrap_document_name(config: EnvironmentConfig) -> str | None:
    """The adopt-mode document's name (what grant_ssm_agent reads), None in create and fleet mode."""
    return config.name_of(BOOTSTRAP_DOCUMENT) if config.gpu_mode == "adopt" else None


def instances_for(config: EnvironmentConfig) -> GpuInstances:
    """The environment's GPU instances for grants: by id when adopted, by the environment tag when created (fleet
    mode's instances are Auto Scaling's to start and stop: modules/fleet.py fleet_for)."""
    where = {"region": config.region, "account": config.account}
    if config.gpu_mode == "adopt":
        return GpuInstances(instance_ids=config.gpu_instance_ids, **where)
    return GpuInstances(environment=config.name, **where)


class GpuInstances:
    """Not a Construct: it creates nothing, it only scopes grants to the GPU instances.

    Args:
        instance_ids: adopt mode: exactly these instances (modules/config.py checks their form).
        environment: create mode: every instance of this account and region tagged ENVIRONMENT_TAG=environment.
            Exactly one of the two is required.
        region, account: where they run. Required.
    """

    def __init__(
        self, *, region: str, account: str, instance_ids: Sequence[str] = (), environment: str | None = None
    ) -> None:
        if not instance_ids and environment is None:
            fail("GpuInstances", "instance_ids", tuple(instance_ids), "is empty: at least one GPU instance is required")
        if instance_ids and environment is not None:
            fail("GpuInstances", "environment", environment, "is for created instances: give instance_ids or it")
        self.instance_ids = tuple(instance_ids)
        self.conditions: Mapping[str, Mapping[str, str]] = {}
        if environment is None:
            self.arns = tuple(arn("ec2", f"instance/{i}", region=region, account=account) for i in instance_ids)
        else:
            self.arns = (arn("ec2", "instance/*", region=region, account=account),)
            self.conditions = {"StringEquals": {f"aws:ResourceTag/{ENVIRONMENT_TAG}": environment}}

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (ec2:*) on exactly these instances (by id, or by the environment tag)."""
        actions = check_actions("GpuInstances", actions, "ec2")
        return [grantee.add(actions, self.arns, conditions=self.conditions or None)]

    def grant_describe(self, role: Role) -> list[Statement]:
        return [role.add(DESCRIBE_ACTIONS, ["*"])]

    def grant_start(self, role: Role) -> list[Statement]:
        return self.grant(role, *START_ACTIONS)

    def grant_stop(self, role: Role) -> list[Statement]:
        return self.grant(role, *STOP_ACTIONS)

    def grant_reboot(self, role: Role) -> list[Statement]:
        return self.grant(role, *REBOOT_ACTIONS)


class GpuHost(Construct):
    """The GPU hosts of one environment, bootstrapped into adapter hosts (see the module docstring).

    Args:
        mode: "adopt" or "create" (HOST_MODES; fleet mode is modules/fleet.py GpuFleet). Required.
        name: base name of what it creates: the document (adopt; CreateDocument: 3-128 of A-Za-z0-9_.-, not starting
            with aws/amazon/amzn), the security group and launch template (create; 3-128 of A-Za-z0-9().-/_), the
            instances' Name tags (<name>-<n>). Required.
        host: who the hosts are and what they run on (modules/host_template.py HostSpec: environment, release
            prefix, region, account, instance profile; the launch settings, which adopt mode refuses changed from
            their defaults: it launches nothing). Required.
        instance_ids: adopt only: the instances, 1..20 ids of the form i-0123456789abcdef0. Required in adopt mode.
        instance_count: create only: 1..20 (the config's range). Default 1.
        vpc_id: create only: the security group's VPC. Default None: the region's default VPC (and its default
            subnet for the instances).

    Attributes: spec (the HostSpec), instance_ids (tokens in create mode), instances (GpuInstances, for grants),
    script (the rendered bootstrap), attach_profile_commands (adopt: one command per instance; create: none).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        mode: str,
        name: str,
        host: HostSpec,
        instance_ids: Sequence[str] = (),
        instance_count: int = 1,
        vpc_id: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        check_in(self, "mode", mode, HOST_MODES, "GpuHost's modes; fleet mode is GpuFleet")
        host.check(self)
        self.mode, self.name, self.spec = mode, name, host
        where = {"region": host.region, "account": host.account}
        self.script = render_bootstrap(
            environment=host.environment, parameter_prefix=host.parameter_prefix, region=host.region
        )
        if mode == "adopt":
            self._check_adopt(name, instance_ids, instance_count)
            self.instance_ids: tuple[str, ...] = tuple(instance_ids)
            self.instances = GpuInstances(instance_ids=instance_ids, **where)
            self._adopt()
        else:
            check(self, "instance_ids", tuple(instance_ids), not instance_ids, "is for adopt mode (create launches)")
            check_range(self, "instance_count", instance_count, 1, 20, "modules/config.py gpu_instance_count")
            template = HostTemplate(self, name=name, host=host, user_data=self.script, vpc_id=vpc_id)
            self.security_group, self.ami = template.security_group, template.ami
            self.launch_template = template.launch_template
            self.instances = GpuInstances(environment=host.environment, **where)
            self.attach_profile_commands: tuple[str, ...] = ()
            tags = {ENVIRONMENT_TAG: host.environment}
            self.hosts = [self._instance(n, tags) for n in range(instance_count)]
            self.instance_ids = tuple(instance.id for instance in self.hosts)

    @classmethod
    def from_config(
        cls, scope: Construct, id: str, *, config: EnvironmentConfig, instance_profile_name: str
    ) -> GpuHost:
        """The environment's hosts as its config describes them (modules/config.py gpu_mode and its settings)."""
        adopt = config.gpu_mode == "adopt"
        return cls(
            scope,
            id,
            mode=config.gpu_mode,
            name=config.name_of(BOOTSTRAP_DOCUMENT if adopt else HOSTS),
            host=HostSpec.from_config(config, instance_profile_name=instance_profile_name),
            instance_ids=config.gpu_instance_ids,
            instance_count=config.gpu_instance_count,
        )

    def _check_adopt(self, name: str, ids: Sequence[str], instance_count: int) -> None:
        check_pattern(self, "name", name, DOCUMENT_NAME, "3-128 of A-Za-z0-9_.- (CreateDocument)")
        check(self, "name", name, not name.lower().startswith(("aws", "amazon", "amzn")), "has a prefix AWS reserves")
        check(self, "instance_ids", tuple(ids), bool(ids), "is empty: adopt mode needs the instances")
        check_range(self, "instance_ids", len(ids), 1, 20, "count; modules/config.py gpu_instance_ids")
        for instance in ids:
            check_pattern(self, "instance_ids", instance, INSTANCE_ID, "an EC2 instance id (i-0123456789abcdef0)")
        check(self, "instance_ids", tuple(ids), len(set(ids)) == len(ids), "lists an instance twice")
        create_only = "is for create mode (adopt launches nothing)"
        check(self, "instance_count", instance_count, instance_count == 1, create_only)
        for prop in self.spec.launch_settings_set():
            check(self, prop, getattr(self.spec, prop), False, create_only)

    def _adopt(self) -> None:
        self.document = SsmDocument(
            self,
            "bootstrap",
            name=self.name,
            document_type="Command",
            document_format="JSON",
            target_type="/AWS::EC2::Instance",
            content=terraform_literal(render(bootstrap_document(self.script))),
        )
        # InstanceIds targets name exactly these instances (CreateAssociation, Target: Key=InstanceIds). Without a
        # schedule it runs when created and whenever it changes; naming the document's version makes every new
        # version of the script such a change, so the hosts get it (https://docs.aws.amazon.com/
        # systems-manager/latest/APIReference/API_Target.html).
        self.association = SsmAssociation(
            self,
            "association",
            name=self.document.name,
            association_name=self.name,
            document_version=self.document.latest_version,
            targets=[SsmAssociationTargets(key="InstanceIds", values=list(self.instance_ids))],
        )
        profile = self.spec.instance_profile_name
        self.attach_profile_commands = tuple(attach_profile_command(i, profile) for i in self.instance_ids)

    def _instance(self, n: int, tags: Mapping[str, str]) -> Instance:
        """One host from the template's version of today. The controller only starts and stops hosts, which changes
        no argument here, and there is no aws_ec2_instance_state: Terraform never sets running/stopped
        (https://registry.terraform.io/providers/hashicorp/aws/latest/docs/resources/ec2_instance_state). A later
        template version (a new AMI or script) reaches new hosts only: ignore_changes keeps Terraform from replacing a
        host, and its disk, for it; a running host gets new releases from the bundle anyway (adapter/README.md)."""
        # Imported here: only create mode builds instances, so the other modes' synths never load these bindings.
        from cdktf_cdktf_provider_aws.instance import Instance, InstanceLaunchTemplate

        return Instance(
            self,
            f"instance-{n}",
            launch_template=InstanceLaunchTemplate(
                id=self.launch_template.id, version=Token.as_string(self.launch_template.latest_version)
            ),
            tags={**tags, "Name": f"{self.name}-{n}"},
            lifecycle=TerraformResourceLifecycle(ignore_changes=["launch_template", "ami", "user_data"]),
        )

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (ec2:*) on these hosts."""
        return self.instances.grant(grantee, *actions)

    def grant_start(self, role: Role) -> list[Statement]:
        return self.instances.grant_start(role)

    def grant_stop(self, role: Role) -> list[Statement]:
        return self.instances.grant_stop(role)
