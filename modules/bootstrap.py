"""The one stack that lives before every other: the environment's Terraform state bucket, the permissions boundary of
its runtime roles, and (optionally) the GitHub OIDC access that lets the delivery workflows plan and apply without
stored keys.

Its own state is local (state/bootstrap/<env>.tfstate): the bucket cannot hold the state of its own creation.

The boundary (`<prefix>-boundary-<env>`, a managed policy) is the most any runtime role of the environment can ever
do: the union of what the orchestrator, the GPU instance and the shutdown Lambda need, on this environment's
resources only (in fleet mode its Auto Scaling group, by name, instead of EC2 starts and stops), and nothing in IAM
or STS. Every role the stacks create carries it (modules/stacks.py), and the
deploy role may write a role only while it does (modules/github_oidc.py), so whatever a merged change puts in a
role's inline policy stays inside it. Only `make bootstrap` (admin credentials) can change it. The `local`
environment is never bootstrapped (moto, local state): its roles carry no boundary (`boundary_for`).
"""

from __future__ import annotations

from typing import Any

from cdktf import LocalBackend, TerraformOutput, TerraformStack
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from constructs import Construct

from modules import bucket, events, fleet, function, gpu, queue, rollout, table
from modules.base import aws_provider, local_state_path
from modules.bucket import PrivateBucket
from modules.config import EnvironmentConfig
from modules.deploy_resources import EVENT_FUNCTION_NAMES, HOSTS_TABLE_NAMES
from modules.github_oidc import (
    FUNCTION_NAMES,
    RUNTIME_QUEUES,
    TABLE_NAMES,
    GithubDeployAccess,
    artifacts_buckets,
)
from modules.iam import BOUNDARY_PREFIX, Statement, arn, boundary_arn, boundary_name, policy, render
from modules.layout import BOOTSTRAP
from modules.stacks_events import EVENT_BUS, EVENTS_FAILED_QUEUE, SIGNING_SECRET, WEBHOOK_QUEUE


def _union(*action_sets: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({a for actions in action_sets for a in actions}))


# What the runtime roles are granted (modules/stacks.py builds them from these grant helpers' constants): the
# boundary allows these actions and no others.
QUEUE_ACTIONS = _union(
    queue.SEND_ACTIONS,
    queue.CONSUME_ACTIONS,
    queue.READ_DEPTH_ACTIONS,
    queue.DEAD_LETTER_ACTIONS,
    function.DEAD_LETTER_ACTIONS,
)
TABLE_ACTIONS = _union(table.SUBMIT_ACTIONS, table.WORKER_ACTIONS, table.INDEX_READ_ACTIONS)
STREAM_ACTIONS = _union(table.STREAM_READ_ACTIONS)  # the task-events function's event source mapping
HOST_TABLE_ACTIONS = _union(table.HOST_WRITE_ACTIONS, table.HOST_READ_ACTIONS, table.HOST_REPORT_ACTIONS)
# The events layer (modules/stacks_events.py): its queues, bus and signing key, by name.
EVENT_QUEUES = (WEBHOOK_QUEUE, EVENTS_FAILED_QUEUE)
PUT_EVENTS_ACTIONS = _union(events.PUT_EVENTS)
SECRET_ACTIONS = _union(events.SECRET_READ, events.SECRET_INITIALIZE)
METRICS_LOG_ACTIONS = _union(gpu.METRICS_LOG_ACTIONS)
OBJECT_ACTIONS = _union(bucket.READ_ACTIONS, bucket.WRITE_ACTIONS)
BUCKET_LIST_ACTIONS = _union(bucket.LIST_ACTIONS)  # the API lists a task's results
PARAMETER_ACTIONS = _union(rollout.READ_PARAMETER_ACTIONS)
INSTANCE_ACTIONS = _union(gpu.START_ACTIONS, gpu.STOP_ACTIONS, gpu.REBOOT_ACTIONS)
DESCRIBE_ACTIONS = _union(gpu.DESCRIBE_ACTIONS)
SSM_AGENT_ACTIONS = _union(gpu.SSM_AGENT_ACTIONS)  # DescribeInstances: "*" only (no resource-level permissions)
# Fleet mode (modules/fleet.py): the controller's and the hosts' calls on the group, and the Describe* calls that
# take no resource.
FLEET_ACTIONS = _union(fleet.SCALE_ACTIONS, fleet.MEMBER_ACTIONS, fleet.RECOVER_ACTIONS)
FLEET_DESCRIBE_ACTIONS = _union(
    fleet.CONTROLLER_DESCRIBE_ACTIONS, fleet.MEMBER_DESCRIBE_ACTIONS, fleet.API_DESCRIBE_ACTIONS
)
LOG_ACTIONS = _union(function.LOG_ACTIONS)
INVOKE_ACTIONS = ("lambda:InvokeFunction",)
# The artifacts bucket encrypts with the aws/s3 managed key, whose key policy lets any principal of the account use
# it through S3. A boundary also caps what a resource-based policy gives a role (IAM User Guide, "Permissions
# boundaries for IAM entities": within an account, a resource-based policy granting to a role ARN "is limited by an
# implicit deny in a permissions boundary"), so the boundary leaves room for the two calls SSE-KMS makes
# (Amazon S3 User Guide, "Using server-side encryption with AWS KMS keys": PutObject needs kms:GenerateDataKey,
# GetObject kms:Decrypt), and only through S3 in this region (AWS KMS Developer Guide, kms:ViaService).
KMS_VIA_S3_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")
# Nothing a runtime role does touches IAM or STS: no role may ever create, change or pass a principal, or mint
# credentials (an explicit Deny, so no later Allow in the boundary can open it by mistake).
NEVER = ("iam:*", "sts:*")


def boundary_policy(config: EnvironmentConfig, *, prefix: str = BOUNDARY_PREFIX) -> dict[str, Any]:
    """The permissions boundary of `config`'s runtime roles, scoped to that environment's exact resources."""
    where = {"region": config.region, "account": config.account}
    queues = [arn("sqs", config.name_of(q), **where) for q in (*RUNTIME_QUEUES, *EVENT_QUEUES)]
    tables = [arn("dynamodb", f"table/{config.name_of(t)}", **where) for t in TABLE_NAMES]
    hosts = [arn("dynamodb", f"table/{config.name_of(t)}", **where) for t in HOSTS_TABLE_NAMES]
    artifacts = arn("s3", artifacts_buckets(prefix, config.name, config.account)[0], region="", account="")
    functions = [arn("lambda", f"function:{config.name_of(f)}", **where) for f in FUNCTION_NAMES]
    logged = (*FUNCTION_NAMES, *EVENT_FUNCTION_NAMES)
    groups = [arn("logs", f"log-group:/aws/lambda/{config.name_of(f)}", **where) for f in logged]
    metrics = arn("logs", f"log-group:{gpu.adapter_metrics_group(config)}", **where)
    return policy(
        [
            Statement(QUEUE_ACTIONS, tuple(queues), sid="Queues"),
            Statement(TABLE_ACTIONS, (*tables, *(f"{t}/index/*" for t in tables)), sid="TaskTable"),
            Statement(STREAM_ACTIONS, tuple(f"{t}/stream/*" for t in tables), sid="TaskTableStream"),
            Statement(HOST_TABLE_ACTIONS, tuple(hosts), sid="HostsTable"),
            Statement(PUT_EVENTS_ACTIONS, (events.bus_arn(config.name_of(EVENT_BUS), **where),), sid="TaskEvents"),
            Statement(SECRET_ACTIONS, (events.secret_arn(config.name_of(SIGNING_SECRET), **where),), sid="WebhookKey"),
            Statement(OBJECT_ACTIONS, (f"{artifacts}/*",), sid="ArtifactsObjects"),
            Statement(BUCKET_LIST_ACTIONS, (artifacts,), sid="ArtifactsListing"),
            Statement(
                KMS_VIA_S3_ACTIONS,
                (arn("kms", "key/*", **where),),
                {"StringEquals": {"kms:ViaService": f"s3.{config.region}.amazonaws.com"}},
                sid="ArtifactsEncryptionViaS3",
            ),
            Statement(
                PARAMETER_ACTIONS, (arn("ssm", f"parameter/{prefix}/{config.name}/*", **where),), sid="Parameters"
            ),
            Statement(DESCRIBE_ACTIONS, ("*",), sid="DescribeInstances"),
            *_gpu_hosts(config),
            # The SSM agent on the hosts registers and takes its commands on "*" (modules/gpu.py says why).
            Statement(SSM_AGENT_ACTIONS, ("*",), sid="SsmAgent"),
            *_bootstrap_document(config),
            Statement(LOG_ACTIONS, (*groups, *(f"{g}:*" for g in groups)), sid="FunctionLogs"),
            Statement(METRICS_LOG_ACTIONS, (f"{metrics}:*",), sid="AdapterMetrics"),
            Statement(INVOKE_ACTIONS, tuple(functions), sid="InvokeShutdownFunction"),
            Statement(NEVER, ("*",), sid="NoIdentityOrCredentials", effect="Deny"),
        ]
    )


def _gpu_hosts(config: EnvironmentConfig) -> list[Statement]:
    """Starting and stopping the GPU instances (adopt, create), or, in fleet mode, the group's desired capacity and
    its members' calls (Auto Scaling itself starts and stops the instances)."""
    if config.gpu_mode == "fleet":
        group = fleet.fleet_for(config)
        members = arn("ec2", "instance/*", region=config.region, account=config.account)
        tagged = {"StringEquals": {f"aws:ResourceTag/{fleet.GROUP_TAG}": group.name}}
        return [
            Statement(FLEET_DESCRIBE_ACTIONS, ("*",), sid="DescribeFleet"),
            Statement(FLEET_ACTIONS, (group.arn,), sid="GpuFleet"),
            Statement(gpu.REBOOT_ACTIONS, (members,), tagged, sid="RebootFleetMembers"),
        ]
    instances = gpu.instances_for(config)
    return [Statement(INSTANCE_ACTIONS, instances.arns, instances.conditions, sid="GpuInstances")]


def _bootstrap_document(config: EnvironmentConfig) -> list[Statement]:
    """Adopt mode: the association's calls ("*") and reading the one bootstrap document."""
    name = gpu.bootstrap_document_name(config)
    if name is None:
        return []
    document = arn("ssm", f"document/{name}", region=config.region, account=config.account)
    return [
        Statement(gpu.SSM_ASSOCIATION_ACTIONS, ("*",), sid="SsmAssociations"),
        Statement(gpu.SSM_DOCUMENT_ACTIONS, (document,), sid="BootstrapDocument"),
    ]


def boundary_for(config: EnvironmentConfig) -> str | None:
    """The boundary `config`'s runtime roles carry: the one bootstrap made, in every environment that keeps remote
    state (only those are bootstrapped); None for `local`, which has no bootstrap and so no boundary to name."""
    if not config.remote_state:
        return None
    return boundary_arn(account=config.account, environment=config.name)


class RuntimeBoundary(Construct):
    """The managed policy `boundary_policy(config)`, named `boundary_name(config.name)`; `arn` is its ARN."""

    def __init__(self, scope: Construct, id: str, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, id)
        self.policy = IamPolicy(
            self,
            "policy",
            name=boundary_name(config.name),
            description=f"The most any runtime role of {config.name} can do (set by make bootstrap only)",
            policy=render(boundary_policy(config), compact=True),
        )
        self.arn: str = self.policy.arn


class BootstrapStack(TerraformStack):
    def __init__(self, scope: Construct, *, config: EnvironmentConfig, outdir: str) -> None:
        super().__init__(scope, BOOTSTRAP)
        aws_provider(self, config)
        LocalBackend(self, path=local_state_path(outdir, BOOTSTRAP, f"bootstrap/{config.name}"))
        state = PrivateBucket(self, "state", name=config.resolved_state_bucket, noncurrent_days=90)
        # Losing this bucket loses every stack's state: no plan may delete it.
        state.bucket.add_override("lifecycle.prevent_destroy", True)
        TerraformOutput(self, "StateBucketName", value=state.name, description="Terraform state of this environment")
        boundary = RuntimeBoundary(self, "boundary", config=config)
        TerraformOutput(
            self, "BoundaryPolicyArn", value=boundary.arn, description="Permissions boundary of the runtime roles"
        )
        if config.github_repository:
            access = GithubDeployAccess(
                self,
                "github",
                repository=config.github_repository,
                environments=[config.name],
                state_bucket_arn=state.arn,
                existing_provider_arn=config.github_oidc_provider_arn or None,
            )
            TerraformOutput(
                self,
                "DeployRoleArn",
                value=access.role_arns[config.name],
                description="Role the apply workflow assumes (GitHub environment of the same name)",
            )
            TerraformOutput(
                self,
                "PlanRoleArn",
                value=access.plan_role_arns[config.name],
                description="Read-only role the pull-request plan assumes",
            )
            TerraformOutput(
                self,
                "OidcProviderArn",
                value=access.provider_arn,
                description="Pass as github_oidc_provider_arn to other environments of this account",
            )
