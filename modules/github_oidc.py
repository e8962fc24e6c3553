"""GitHub Actions -> AWS without stored keys: the OIDC provider and two roles per environment.

- `<prefix>-deploy-<env>`: plan + apply of the environment's stacks. Its trust accepts only a job of this repository
  that runs in the GitHub environment `<env>` (where staging/prod require a reviewer and every deploy environment is
  limited to main).
- `<prefix>-plan-<env>`: read-only, for plans on pull requests. Its trust accepts only the GitHub environment
  `<env>-plan`, which needs no reviewer: a pull request's code runs there, so it gets nothing that can write.

Both trusts use StringEquals on `aud` and the full `sub`, never StringLike: one typo in a wildcard would otherwise
trust every repository on GitHub. Action lists are module-level constants so tests and reviewers read the same thing.

The deploy role writes IAM, so it is built so that it cannot escalate through what it writes (tests/
test_deploy_escalation.py proves each point against an IAM-enforcing server):
- it names the runtime roles and the instance profile exactly (`<name>-<env>`), never by prefix;
- every write that changes what a runtime role may do or who may assume it needs the role to carry the
  environment's permissions boundary (`iam:PermissionsBoundary`, modules/iam.py `boundary_arn`), and an explicit
  Deny refuses those writes on any role without it; the boundary can never be removed, and neither it nor any CI
  role or the OIDC provider can be edited;
- no managed policy can be attached, and none created but the caller policies (the API's two, the canvas's), by
  their exact names: a runtime role gets inline policies only, capped by the boundary. The caller policies are what
  ops attach to people; CI can change what they allow (through a reviewed plan, like every other resource) but never
  who holds them;
- the one role it may create without the boundary is AWS's own: Auto Scaling's service-linked role, for that service
  only (iam:AWSServiceName). Only the service can assume it, and no one can edit its policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.iam_openid_connect_provider import IamOpenidConnectProvider
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct

from modules.fleet import FLEET
from modules.iam import (
    MIN_SESSION_SECONDS,
    ROLE_NAME,
    ROLE_NAME_RULE,
    Role,
    Statement,
    arn,
    boundary_arn,
    boundary_name,
    policy,
    render,
)
from modules.props import check, check_actions, check_pattern

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_OIDC_URL = f"https://{GITHUB_OIDC_HOST}"
STS_AUDIENCE = "sts.amazonaws.com"
PLAN_ENVIRONMENT_SUFFIX = "-plan"

# What modules/stacks.py names our resources, before the environment suffix ("-dev"...). A deploy role reaches
# `<name>*-<env>` for these and nothing else, and the IAM ones and the buckets by their exact names only;
# tests/test_github_oidc.py synthesizes the real stacks of an environment and fails when a resource's name falls
# outside them (rename both together).
QUEUE_NAMES = ("gpu_tasks_queue", "shutdown-gpu-lambda-dlq")  # and gpu_tasks_queue_dlq
RUNTIME_QUEUES = ("gpu_tasks_queue", "gpu_tasks_queue_dlq", "shutdown-gpu-lambda-dlq")  # exact, for the boundary
TABLE_NAMES = ("task_store",)
INSTANCE_ROLE, SHUTDOWN_ROLE = "gpu-instance-role", "lambda-gpu-shutdown-role"
ORCHESTRATOR_ROLE = "orchestrator-task-role"
ROLE_NAMES = (INSTANCE_ROLE, SHUTDOWN_ROLE, ORCHESTRATOR_ROLE)
INSTANCE_PROFILE_NAMES = ("gpu-instance-profile",)
API_FUNCTION = "gpu-orchestrator-api"  # its layer is `<function>-<env>-deps` (modules/api.py)
FUNCTION_NAMES = ("shutdown-gpu-lambda", API_FUNCTION)
# The managed policies for callers, which ops attach to people (users, groups, SSO permission sets) or to what runs
# the canvas service: the API's submit and admin policies and the canvas's. Never attached by CI (no Attach*).
CALLER_POLICY_NAMES = ("gpu-orchestrator-submit", "gpu-orchestrator-admin", "gpu-orchestrator-canvas")
ALARM_NAMES = ("QueueEmptyFor",)  # QueueEmptyFor<minutes>Min
# The GPU stack (modules/gpu.py): adopt mode's bootstrap document; create mode's launch template, security group and
# instances, all named or tagged with the environment.
DOCUMENT_NAMES = ("gpu-adapter-bootstrap",)
HOST_NAMES = ("gpu-adapter",)
FLEET_NAMES = (FLEET,)  # fleet mode's Auto Scaling group (modules/fleet.py), by its exact name
RULE_NAMES = ("gpu-orchestrator-idle-check",)

# Read actions: the plan role gets these, the deploy role gets them and the matching writes.
SQS_READ = ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListDeadLetterSourceQueues", "sqs:ListQueueTags")
SQS_WRITE = ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue")
DYNAMODB_READ = (
    "dynamodb:DescribeContinuousBackups",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:ListTagsOfResource",
)
# No dynamodb:DeleteTable: CI can never delete the task store, whatever a change to prevent_destroy says.
DYNAMODB_WRITE = (
    "dynamodb:CreateTable",
    "dynamodb:TagResource",
    "dynamodb:UntagResource",
    "dynamodb:UpdateContinuousBackups",
    "dynamodb:UpdateTable",
    "dynamodb:UpdateTimeToLive",
)
IAM_READ = (
    "iam:GetInstanceProfile",
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:ListInstanceProfilesForRole",
    "iam:ListRolePolicies",
    "iam:ListRoleTags",
)
# IAM condition keys per action: AWS's Service Authorization Reference, "Actions, resources, and condition keys for
# AWS Identity and Access Management" (https://docs.aws.amazon.com/service-authorization/latest/reference/
# list_awsidentityandaccessmanagementiam.html; read in the machine-readable copy of that table at
# github.com/iann0036/iam-dataset, aws/iam_definition.json). iam:PermissionsBoundary is a condition key of the role
# actions AttachRolePolicy, CreateRole, DeleteRole, DeleteRolePermissionsBoundary, DeleteRolePolicy,
# DetachRolePolicy, PutRolePermissionsBoundary, PutRolePolicy, UpdateAssumeRolePolicy, UpdateRole and
# UpdateRoleDescription (and their user twins); for CreateRole and PutRolePermissionsBoundary it is the boundary the
# request sets, for the others the boundary the role carries (IAM User Guide, "IAM and AWS STS condition context
# keys", iam:PermissionsBoundary: "checks that the specified policy is attached as a permissions boundary on the IAM
# principal resource"). TagRole, PassRole and the instance-profile actions do not take it.
PERMISSIONS_BOUNDARY_ACTIONS = (
    "iam:AttachRolePolicy",
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:DeleteRolePermissionsBoundary",
    "iam:DeleteRolePolicy",
    "iam:DetachRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:PutRolePolicy",
    "iam:UpdateAssumeRolePolicy",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
)
#
# Writes that change what a runtime role may do or who may assume it: only on a role carrying the boundary.
# That is every action taking the boundary key but AttachRolePolicy and DeleteRolePermissionsBoundary (never allowed).
ROLE_WRITE = tuple(
    a for a in PERMISSIONS_BOUNDARY_ACTIONS if a not in ("iam:AttachRolePolicy", "iam:DeleteRolePermissionsBoundary")
)
# Refused (explicit Deny) whenever the role would be without the boundary, whatever else a policy allows.
# AttachRolePolicy is in no Allow at all: our stacks use inline policies only, so no managed policy (say
# AdministratorAccess) is ever attached by CI.
BOUNDARY_REQUIRED = (
    "iam:AttachRolePolicy",
    "iam:CreateRole",
    "iam:PutRolePermissionsBoundary",
    "iam:PutRolePolicy",
    "iam:UpdateAssumeRolePolicy",
)
# Never allowed, on any role: a role that loses its boundary could then be given anything.
BOUNDARY_REMOVAL = ("iam:DeleteRolePermissionsBoundary",)
# Tags grant nothing here (no policy of ours conditions on a tag). CreateRole/CreateInstanceProfile with tags (the
# provider's default tags) also need TagRole/TagInstanceProfile (IAM User Guide, "Tags for AWS Identity and Access
# Management resources": tagging on create needs the Tag* permission too).
ROLE_TAGGING = ("iam:TagRole", "iam:UntagRole")
PROFILE_WRITE = (
    "iam:AddRoleToInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:TagInstanceProfile",
    "iam:UntagInstanceProfile",
)
# Passing a role, each to its own service only: the shutdown role to Lambda (iam:PassedToService
# lambda.amazonaws.com, the key CreateFunction sets), the GPU role into its instance profile (AddRoleToInstanceProfile
# "must be granted the PassRole permission on the IAM role", IAM API Reference). The IAM docs name no service for
# that call, so the GPU role's condition is ...IfExists: a call that names no service, or EC2, may pass it; one
# that passes it to any other service (a Lambda function) may not. Fleet mode's group passes it the same way, into
# the instances it launches from the template. The orchestrator's role goes to the API function, so to Lambda only,
# like the shutdown role.
PASS_ROLE = ("iam:PassRole",)
LAMBDA_READ = ("lambda:Get*", "lambda:List*")
LAMBDA_WRITE = (
    "lambda:AddPermission",
    "lambda:CreateFunction",
    "lambda:DeleteFunction",
    "lambda:DeleteFunctionConcurrency",
    "lambda:PublishVersion",
    "lambda:PutFunctionConcurrency",
    "lambda:RemovePermission",
    "lambda:TagResource",
    "lambda:UntagResource",
    "lambda:UpdateFunctionCode",
    "lambda:UpdateFunctionConfiguration",
    # The API: its alias "admin" and the two function URLs (one per qualifier).
    "lambda:CreateAlias",
    "lambda:DeleteAlias",
    "lambda:UpdateAlias",
    "lambda:CreateFunctionUrlConfig",
    "lambda:DeleteFunctionUrlConfig",
    "lambda:UpdateFunctionUrlConfig",
)
LAYER_WRITE = ("lambda:DeleteLayerVersion", "lambda:PublishLayerVersion")
# The callers' managed policies (aws_iam_policy: create, read, new versions on update, delete with old versions).
CALLER_POLICY_READ = ("iam:GetPolicy", "iam:GetPolicyVersion", "iam:ListPolicyTags", "iam:ListPolicyVersions")
CALLER_POLICY_WRITE = (
    "iam:CreatePolicy",
    "iam:CreatePolicyVersion",
    "iam:DeletePolicy",
    "iam:DeletePolicyVersion",
    "iam:TagPolicy",
    "iam:UntagPolicy",
)
LOGS_READ = ("logs:ListTagsForResource", "logs:ListTagsLogGroup")
LOGS_WRITE = (
    "logs:CreateLogGroup",
    "logs:DeleteLogGroup",
    "logs:DeleteRetentionPolicy",
    "logs:PutRetentionPolicy",
    "logs:TagResource",
    "logs:UntagResource",
)
ALARM_READ = ("cloudwatch:ListTagsForResource",)
ALARM_WRITE = (
    "cloudwatch:DeleteAlarms",
    "cloudwatch:DisableAlarmActions",
    "cloudwatch:EnableAlarmActions",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:TagResource",
    "cloudwatch:UntagResource",
)
EVENTS_READ = ("events:DescribeRule", "events:ListTagsForResource", "events:ListTargetsByRule")
EVENTS_WRITE = (
    "events:DeleteRule",
    "events:DisableRule",
    "events:EnableRule",
    "events:PutRule",
    "events:PutTargets",
    "events:RemoveTargets",
    "events:TagResource",
    "events:UntagResource",
)
SSM_READ = ("ssm:GetParameter", "ssm:GetParameters", "ssm:ListTagsForResource")
# AWS's public parameter naming the Deep Learning AMI (create mode's data source): read-only, AWS's own.
PUBLIC_PARAMETER_READ = ("ssm:GetParameter",)
DOCUMENT_READ = ("ssm:DescribeDocument", "ssm:DescribeDocumentPermission", "ssm:GetDocument", "ssm:ListTagsForResource")
DOCUMENT_WRITE = (
    "ssm:AddTagsToResource",
    "ssm:CreateDocument",
    "ssm:DeleteDocument",
    "ssm:RemoveTagsFromResource",
    "ssm:UpdateDocument",
    "ssm:UpdateDocumentDefaultVersion",
)
# An association is authorized on the document and the instances it targets, and on itself once it exists
# (Service Authorization Reference, Systems Manager: CreateAssociation takes document, instance and association).
ASSOCIATION_READ = ("ssm:DescribeAssociation",)
ASSOCIATION_WRITE = ("ssm:CreateAssociation", "ssm:DeleteAssociation", "ssm:UpdateAssociation")
# Create mode (EC2 Service Authorization Reference, https://docs.aws.amazon.com/service-authorization/latest/
# reference/list_amazonec2.html): creating the launch template, the security group and instances from the template
# (RunInstances is authorized on every resource it touches: image, subnet, network interface, volume, security group,
# launch template, instance); tags only while creating (ec2:CreateAction); and changing or deleting only what carries
# this environment's `environment` tag (the provider's default tags put it on everything the stacks create).
HOST_CREATE = ("ec2:CreateLaunchTemplate", "ec2:CreateSecurityGroup", "ec2:RunInstances")
HOST_TAG_ON_CREATE = ("ec2:CreateTags",)
HOST_CHANGE = (
    "ec2:AuthorizeSecurityGroupEgress",
    "ec2:CreateLaunchTemplateVersion",
    "ec2:DeleteLaunchTemplate",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteTags",
    "ec2:ModifyLaunchTemplate",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:TerminateInstances",
)
# Fleet mode (modules/fleet.py GpuFleet), what Terraform calls on the group, all authorized on the group's ARN
# (Service Authorization Reference, Amazon EC2 Auto Scaling: https://docs.aws.amazon.com/service-authorization/
# latest/reference/list_amazonec2autoscaling.html): create/update/delete, its hook and warm pool, its tags (tagging
# on create needs CreateOrUpdateTags too), AZRebalance suspended, and on delete the provider clears the members'
# scale-in protection before it drains the group (SetInstanceProtection). Its Describe* calls take no resource: they
# are in UNSCOPED_READ. Creating or updating a group from a launch template also checks ec2:RunInstances on what it
# launches (GpuHostsCreate) and iam:PassRole on the template's instance role (PassInstanceRoleToProfile): "An IAM user
# or role that creates or updates an Auto Scaling group using a launch template must have permission to use the
# ec2:RunInstances action", and it needs iam:PassRole for a template that names an instance profile
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html).
FLEET_WRITE = (
    "autoscaling:CreateAutoScalingGroup",
    "autoscaling:CreateOrUpdateTags",
    "autoscaling:DeleteAutoScalingGroup",
    "autoscaling:DeleteLifecycleHook",
    "autoscaling:DeleteTags",
    "autoscaling:DeleteWarmPool",
    "autoscaling:PutLifecycleHook",
    "autoscaling:PutWarmPool",
    "autoscaling:ResumeProcesses",
    "autoscaling:SetInstanceProtection",
    "autoscaling:SuspendProcesses",
    "autoscaling:UpdateAutoScalingGroup",
)
# The first group of an account makes Auto Scaling create its service-linked role, AWSServiceRoleForAutoScaling,
# with the caller's iam:CreateServiceLinkedRole, as AWS's own example grants it: on that role's ARN, for
# autoscaling.amazonaws.com only (Amazon EC2 Auto Scaling User Guide, "Service-linked roles":
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/autoscaling-service-linked-role.html). That role launches
# and stops the fleet's instances (Spot included: it holds ec2:RequestSpotInstances), so no EC2 Spot role is needed.
SERVICE_LINKED_ROLE_ACTIONS = ("iam:CreateServiceLinkedRole",)
AUTOSCALING_SERVICE = "autoscaling.amazonaws.com"
AUTOSCALING_SERVICE_ROLE = f"aws-service-role/{AUTOSCALING_SERVICE}/AWSServiceRoleForAutoScaling"
SSM_WRITE = ("ssm:AddTagsToResource", "ssm:DeleteParameter", "ssm:PutParameter", "ssm:RemoveTagsFromResource")
BUCKET_READ = (
    "s3:GetAccelerateConfiguration",
    "s3:GetBucket*",
    "s3:GetEncryptionConfiguration",
    "s3:GetLifecycleConfiguration",
    "s3:GetReplicationConfiguration",
    "s3:ListBucket",
)
BUCKET_WRITE = (
    "s3:CreateBucket",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:ListBucketVersions",
    "s3:PutBucketLogging",
    "s3:PutBucketPolicy",
    "s3:PutBucketOwnershipControls",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketTagging",
    "s3:PutBucketVersioning",
    "s3:PutEncryptionConfiguration",
    "s3:PutLifecycleConfiguration",
)
OBJECT_READ = ("s3:GetObject", "s3:GetObjectTagging")
OBJECT_WRITE = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObject", "s3:PutObjectTagging")
# These support no resource-level permissions: AWS accepts only "*" for them. All are read-only.
UNSCOPED_READ = (
    "autoscaling:Describe*",
    "cloudwatch:DescribeAlarms",
    "ec2:Describe*",
    "logs:DescribeLogGroups",
    "ssm:DescribeParameters",
)
STATE_BUCKET_READ = ("s3:ListBucket",)
STATE_OBJECT_READ = ("s3:GetObject",)
STATE_OBJECT_WRITE = ("s3:DeleteObject", "s3:PutObject")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PROVIDER_ARN = re.compile(rf"arn:aws[a-z-]*:iam::\d{{12}}:oidc-provider/{re.escape(GITHUB_OIDC_HOST)}")


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str]) -> Statement:
    return Statement(tuple(actions), tuple(resources), sid=sid)


def subject(repository: str, github_environment: str) -> str:
    return f"repo:{repository}:environment:{github_environment}"


def trust_policy(provider_arn: str, repository: str, github_environment: str) -> dict[str, Any]:
    return policy(
        [
            Statement(
                "sts:AssumeRoleWithWebIdentity",
                conditions={
                    "StringEquals": {
                        f"{GITHUB_OIDC_HOST}:aud": STS_AUDIENCE,
                        f"{GITHUB_OIDC_HOST}:sub": subject(repository, github_environment),
                    }
                },
                sid="GithubEnvironmentOnly",
                principal={"Federated": provider_arn},
            )
        ]
    )


def _names(account: str, service: str, kind: str, bases: Sequence[str], suffix: str, sep: str = "/") -> list[str]:
    region = "" if service == "iam" else "*"
    return [arn(service, f"{kind}{sep}{base}*{suffix}", region=region, account=account) for base in bases]


def _iam(account: str, kind: str, bases: Sequence[str], environment: str) -> list[str]:
    """Exact IAM ARNs `<kind>/<base>-<env>`: a pattern would also admit any new role or profile by that prefix."""
    return [arn("iam", f"{kind}/{base}-{environment}", region="", account=account) for base in bases]


def artifacts_buckets(prefix: str, environment: str, account: str) -> list[str]:
    """The artifacts bucket and its access-log bucket (modules/stacks.py ArtifactsStack), by their exact names.
    Bucket names are global: a pattern such as `<prefix>-artifacts-<env>-*` would also match another account's
    bucket, while these names carry this account's id."""
    name = f"{prefix}-artifacts-{environment}-{account}"
    return [name, f"{name}-logs"]


def _service_resources(account: str, environment: str, prefix: str) -> dict[str, list[str]]:
    """ARNs and ARN patterns for one environment's resources (the region is free: an environment picks its own)."""
    end = f"-{environment}"
    artifacts, logs = (arn("s3", b, region="", account="") for b in artifacts_buckets(prefix, environment, account))
    return {
        "sqs": [arn("sqs", f"{base}*{end}", region="*", account=account) for base in QUEUE_NAMES],
        "dynamodb": _names(account, "dynamodb", "table", TABLE_NAMES, end),
        "iam": _iam(account, "role", ROLE_NAMES, environment)
        + _iam(account, "instance-profile", INSTANCE_PROFILE_NAMES, environment),
        "role": _iam(account, "role", ROLE_NAMES, environment),
        "profile": _iam(account, "instance-profile", INSTANCE_PROFILE_NAMES, environment),
        "shutdown-role": _iam(account, "role", [SHUTDOWN_ROLE], environment),
        "instance-role": _iam(account, "role", [INSTANCE_ROLE], environment),
        "lambda": [
            qualified
            for name in _names(account, "lambda", "function", FUNCTION_NAMES, end, sep=":")
            for qualified in (name, f"{name}:*")  # an alias or version of it
        ],
        # A layer's ARN with and without its version (PublishLayerVersion names the layer, the others a version).
        "layer": [
            versioned
            for name in [arn("lambda", f"layer:{API_FUNCTION}{end}-deps", region="*", account=account)]
            for versioned in (name, f"{name}:*")
        ],
        "caller-policy": _iam(account, "policy", CALLER_POLICY_NAMES, environment),
        "orchestrator-role": _iam(account, "role", [ORCHESTRATOR_ROLE], environment),
        # Log-group actions are authorized on the group's ARN with or without the trailing ":*".
        "logs": [
            arn + tail
            for arn in _names(account, "logs", "log-group", [f"/aws/lambda/{b}" for b in FUNCTION_NAMES], end, sep=":")
            for tail in ("", ":*")
        ],
        "cloudwatch": _names(account, "cloudwatch", "alarm", ALARM_NAMES, end, sep=":"),
        "events": _names(account, "events", "rule", RULE_NAMES, end),
        "ssm": [arn("ssm", f"parameter/{prefix}/{environment}/*", region="*", account=account)],
        "public-parameter": [arn("ssm", "parameter/aws/service/deeplearning/*", region="*", account="")],
        "document": _names(account, "ssm", "document", DOCUMENT_NAMES, end),
        "association": [
            *_names(account, "ssm", "document", DOCUMENT_NAMES, end),
            arn("ssm", "association/*", region="*", account=account),
            arn("ec2", "instance/*", region="*", account=account),
        ],
        # What RunInstances and the template/security group calls touch: the environment's own template and group
        # by name, and in this account the instances, volumes and interfaces they create, the subnets and VPCs
        # they use; AWS's images (no account) and this account's.
        "hosts": [
            arn("ec2", "launch-template/*", region="*", account=account),
            arn("ec2", "security-group/*", region="*", account=account),
            arn("ec2", "security-group-rule/*", region="*", account=account),
            arn("ec2", "vpc/*", region="*", account=account),
            arn("ec2", "subnet/*", region="*", account=account),
            arn("ec2", "network-interface/*", region="*", account=account),
            arn("ec2", "volume/*", region="*", account=account),
            arn("ec2", "instance/*", region="*", account=account),
            arn("ec2", "image/*", region="*", account=""),
        ],
        # Exact names; the uuid Auto Scaling assigns at creation is wildcarded (modules/fleet.py group_arn).
        "fleet": [
            arn("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{base}{end}", region="*", account=account)
            for base in FLEET_NAMES
        ],
        "service-linked-role": [arn("iam", f"role/{AUTOSCALING_SERVICE_ROLE}", region="", account=account)],
        "bucket": [artifacts, logs],
        "object": [f"{artifacts}/*", f"{logs}/*"],
        "adapter": [f"{artifacts}/adapter/*"],
    }


# IAM quotas (IAM User Guide, reference_iam-quotas): a role's inline policies together hold at most 10,240
# characters, one managed policy at most 6,144 (whitespace not counted). The deploy policy outgrows the first, so
# the statements for the API and the GPU hosts go into a managed policy of their own, `<deploy role>-hosts`, made by
# bootstrap and attached to the deploy role only; the deploy role can never change it (NoSelfEscalation).
INLINE_LIMIT, MANAGED_LIMIT = 10_240, 6_144
MANAGED_SIDS = frozenset(
    {
        "PassOrchestratorRoleToLambda",
        "Layers",
        "CallerPolicies",
        "PublicParameters",
        "BootstrapDocument",
        "BootstrapAssociation",
        "GpuHostsCreate",
        "GpuHostsTagOnCreate",
        "GpuHostsOfThisEnvironment",
        "GpuFleet",
    }
)


def split(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`document` as (the inline part, the managed part): the statements of MANAGED_SIDS go to the second. IAM
    evaluates the union of a role's policies, so the pair allows and denies exactly what `document` does."""
    statements = list(document["Statement"])
    inline = [st for st in statements if st.get("Sid") not in MANAGED_SIDS]
    managed = [st for st in statements if st.get("Sid") in MANAGED_SIDS]
    return ({**document, "Statement": inline}, {**document, "Statement": managed})


def plan_policy(*, account: str, environment: str, state_bucket_arn: str, prefix: str) -> dict[str, Any]:
    """Read-only: refresh every resource of the environment and read its state (plans run with -lock=false)."""
    res = _service_resources(account, environment, prefix)
    return policy(
        [
            _statement("Queues", SQS_READ, res["sqs"]),
            _statement("TaskStore", DYNAMODB_READ, res["dynamodb"]),
            _statement("Iam", IAM_READ, res["iam"]),
            _statement("Lambda", LAMBDA_READ, res["lambda"]),
            _statement("Layers", LAMBDA_READ, res["layer"]),
            _statement("CallerPolicies", CALLER_POLICY_READ, res["caller-policy"]),
            _statement("Logs", LOGS_READ, res["logs"]),
            _statement("Alarms", ALARM_READ, res["cloudwatch"]),
            _statement("Schedules", EVENTS_READ, res["events"]),
            _statement("Parameters", SSM_READ, res["ssm"]),
            _statement("PublicParameters", PUBLIC_PARAMETER_READ, res["public-parameter"]),
            _statement("BootstrapDocument", DOCUMENT_READ, res["document"]),
            _statement("BootstrapAssociation", ASSOCIATION_READ, res["association"]),
            _statement("ArtifactsBucket", BUCKET_READ, res["bucket"]),
            # Only the adapter bundles Terraform manages: task inputs and results stay unreadable from a pull request.
            _statement("AdapterBundles", OBJECT_READ, res["adapter"]),
            _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
            _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
            _statement("StateObjects", STATE_OBJECT_READ, [f"{state_bucket_arn}/{environment}/*"]),
        ]
    )


def deploy_policy(*, account: str, environment: str, state_bucket_arn: str, prefix: str) -> dict[str, Any]:
    """Plan and apply of one environment's stacks; its state keys only (<env>/*), with S3-native locking. IAM
    writes only on roles carrying the environment's boundary (module docstring)."""
    res = _service_resources(account, environment, prefix)
    boundary = boundary_arn(account=account, environment=environment, prefix=prefix)
    with_boundary = {"StringEquals": {"iam:PermissionsBoundary": boundary}}
    protected = [arn("iam", f"role/{prefix}-{kind}-*", region="", account=account) for kind in ("deploy", "plan")]
    protected.append(arn("iam", f"policy/{prefix}-deploy-*", region="", account=account))  # its own managed part
    protected.append(arn("iam", f"oidc-provider/{GITHUB_OIDC_HOST}", region="", account=account))
    # Every environment's boundary (an account may hold several environments): bootstrap's, never CI's to change.
    protected.append(arn("iam", f"policy/{boundary_name('*', prefix)}", region="", account=account))
    return policy(
        [
            _statement("Queues", SQS_READ + SQS_WRITE, res["sqs"]),
            _statement("TaskStore", DYNAMODB_READ + DYNAMODB_WRITE, res["dynamodb"]),
            _statement("IamRead", IAM_READ, res["iam"]),
            Statement(ROLE_WRITE, tuple(res["role"]), with_boundary, sid="BoundedRoles"),
            _statement("RoleTags", ROLE_TAGGING, res["role"]),
            _statement("InstanceProfile", PROFILE_WRITE, res["profile"]),
            Statement(
                PASS_ROLE,
                tuple(res["shutdown-role"]),
                {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
                sid="PassShutdownRoleToLambda",
            ),
            Statement(
                PASS_ROLE,
                tuple(res["instance-role"]),
                {"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}},
                sid="PassInstanceRoleToProfile",
            ),
            Statement(
                PASS_ROLE,
                tuple(res["orchestrator-role"]),
                {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
                sid="PassOrchestratorRoleToLambda",
            ),
            _statement("Lambda", LAMBDA_READ + LAMBDA_WRITE, res["lambda"]),
            _statement("Layers", LAMBDA_READ + LAYER_WRITE, res["layer"]),
            _statement("CallerPolicies", CALLER_POLICY_READ + CALLER_POLICY_WRITE, res["caller-policy"]),
            _statement("Logs", LOGS_READ + LOGS_WRITE, res["logs"]),
            _statement("Alarms", ALARM_READ + ALARM_WRITE, res["cloudwatch"]),
            _statement("Schedules", EVENTS_READ + EVENTS_WRITE, res["events"]),
            _statement("Parameters", SSM_READ + SSM_WRITE, res["ssm"]),
            _statement("PublicParameters", PUBLIC_PARAMETER_READ, res["public-parameter"]),
            _statement("BootstrapDocument", DOCUMENT_READ + DOCUMENT_WRITE, res["document"]),
            _statement("BootstrapAssociation", ASSOCIATION_READ + ASSOCIATION_WRITE, res["association"]),
            _statement("GpuHostsCreate", HOST_CREATE, res["hosts"]),
            Statement(
                HOST_TAG_ON_CREATE,
                tuple(res["hosts"]),
                {"StringEquals": {"ec2:CreateAction": list(HOST_CREATE)}},
                sid="GpuHostsTagOnCreate",
            ),
            Statement(
                HOST_CHANGE,
                tuple(res["hosts"]),
                {"StringEquals": {"aws:ResourceTag/environment": environment}},
                sid="GpuHostsOfThisEnvironment",
            ),
            _statement("GpuFleet", FLEET_WRITE, res["fleet"]),
            Statement(
                SERVICE_LINKED_ROLE_ACTIONS,
                tuple(res["service-linked-role"]),
                {"StringEquals": {"iam:AWSServiceName": AUTOSCALING_SERVICE}},
                sid="AutoScalingServiceLinkedRole",
            ),
            _statement("ArtifactsBucket", BUCKET_READ + BUCKET_WRITE, res["bucket"]),
            _statement("ArtifactsObjects", OBJECT_READ + OBJECT_WRITE, res["object"]),
            _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
            _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
            _statement("StateObjects", STATE_OBJECT_READ + STATE_OBJECT_WRITE, [f"{state_bucket_arn}/{environment}/*"]),
            # Belt and braces, whatever an Allow above (or a later edit) says: no role without this boundary, no
            # boundary removed, and no widening of the CI roles, the OIDC provider or any boundary policy.
            Statement(
                BOUNDARY_REQUIRED,
                ("*",),
                {"StringNotEquals": {"iam:PermissionsBoundary": boundary}},
                sid="NoRoleWithoutBoundary",
                effect="Deny",
            ),
            Statement(BOUNDARY_REMOVAL, ("*",), sid="BoundaryStays", effect="Deny"),
            Statement("iam:*", tuple(protected), sid="NoSelfEscalation", effect="Deny"),
        ]
    )


class GithubDeployAccess(Construct):
    """The OIDC provider (or an existing one) and, per environment, a deploy role and a read-only plan role.

    Args:
        repository: owner/name of the GitHub repository whose workflows may assume the roles. Required.
        environments: the environments to deploy: distinct plain lowercase names (1-31 of a-z0-9-, starting with a
            letter, not ending in -plan). Required.
        state_bucket_arn: the Terraform state bucket (an S3 bucket ARN, or a reference to one). Required.
        name_prefix: roles are `<prefix>-deploy-<env>` and `<prefix>-plan-<env>`, each an IAM role name (1-64
            characters of A-Za-z0-9+=,.@_-). Default gpu-orchestrator.
        existing_provider_arn: the account's GitHub OIDC provider, where another environment created it (IAM allows
            one per URL and account). Default None: create it.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        repository: str,
        environments: list[str],
        state_bucket_arn: str,
        name_prefix: str = "gpu-orchestrator",
        existing_provider_arn: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        self._check_props(repository, environments, state_bucket_arn, name_prefix, existing_provider_arn)
        account = DataAwsCallerIdentity(self, "account").account_id
        self.provider_arn = existing_provider_arn or self._provider()
        self.role_arns: dict[str, str] = {}
        self.plan_role_arns: dict[str, str] = {}
        for env in environments:
            policy_args: dict[str, Any] = {
                "account": account,
                "environment": env,
                "state_bucket_arn": state_bucket_arn,
                "prefix": name_prefix,
            }
            self.role_arns[env] = self._role(
                f"{name_prefix}-deploy-{env}",
                repository,
                env,
                "deploy",
                deploy_policy(**policy_args),
                f"GitHub Actions plan+apply of {env}",
            )
            self.plan_role_arns[env] = self._role(
                f"{name_prefix}-plan-{env}",
                repository,
                f"{env}{PLAN_ENVIRONMENT_SUFFIX}",
                "plan-read-only",
                plan_policy(**policy_args),
                f"GitHub Actions read-only plan of {env}",
            )

    def _check_props(
        self, repository: str, environments: list[str], state_bucket: str, prefix: str, provider_arn: str | None
    ) -> None:
        check_pattern(self, "repository", repository, _REPOSITORY, "owner/name (GitHub repository)")
        distinct = bool(environments) and len(set(environments)) == len(environments)
        check(self, "environments", environments, distinct, "must be a non-empty list without duplicates")
        for env in environments:
            plain = bool(_ENVIRONMENT.fullmatch(env)) and not env.endswith(PLAN_ENVIRONMENT_SUFFIX)
            check(self, "environments", env, plain, "is not a plain lowercase name (1-31 of a-z0-9-, not *-plan)")
            names = (f"{prefix}-deploy-{env}", f"{prefix}-plan-{env}")
            ok = all(ROLE_NAME.fullmatch(n) for n in names)
            check(self, "name_prefix", prefix, ok, f"makes a role name for {env!r} that is not {ROLE_NAME_RULE}")
        check_pattern(self, "state_bucket_arn", state_bucket, _BUCKET_ARN, "an S3 bucket ARN (arn:aws:s3:::<name>)")
        check_pattern(
            self,
            "existing_provider_arn",
            provider_arn,
            _PROVIDER_ARN,
            f"an IAM OIDC provider ARN for {GITHUB_OIDC_HOST}",
        )

    def _provider(self) -> str:
        """One provider per account and URL: a second environment in the same account passes its ARN instead.
        No thumbprint_list: AWS verifies GitHub's certificate against its own trusted CAs (provider >= 5.81)."""
        provider = IamOpenidConnectProvider(self, "github", url=GITHUB_OIDC_URL, client_id_list=[STS_AUDIENCE])
        provider_arn: str = provider.arn
        return provider_arn

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (sts:* or iam:*) on every role this construct creates (`access.grant(role, "sts:AssumeRole")`)."""
        roles = [*self.role_arns.values(), *self.plan_role_arns.values()]
        return [grantee.add(check_actions(self, actions, "sts", "iam"), roles)]

    def _role(
        self,
        name: str,
        repository: str,
        github_env: str,
        policy_name: str,
        document: dict[str, Any],
        purpose: str,
    ) -> str:
        role = IamRole(
            self,
            name,
            name=name,
            description=f"{purpose} ({repository}, GitHub environment {github_env})",
            assume_role_policy=render(trust_policy(self.provider_arn, repository, github_env), compact=True),
            max_session_duration=MIN_SESSION_SECONDS,
        )
        # Split only when IAM's inline limit requires it (the rendered length counts tokens longer than the account
        # ids they resolve to, so this errs on the side of splitting).
        whole = render(document, compact=True)
        inline, managed = split(document) if len(whole) >= INLINE_LIMIT else (document, {"Statement": []})
        IamRolePolicy(self, f"{name}-policy", name=policy_name, role=role.id, policy=render(inline, compact=True))
        if managed["Statement"]:
            extra = IamPolicy(
                self,
                f"{name}-hosts",
                name=f"{name}-hosts",
                description=f"{purpose}: the API and the GPU hosts (IAM's inline size limit)",
                policy=render(managed, compact=True),
            )
            IamRolePolicyAttachment(self, f"{name}-hosts-attachment", role=role.name, policy_arn=extra.arn)
        arn: str = role.arn
        return arn
