"""GitHub Actions -> AWS without stored keys: the OIDC provider and two roles per environment.

- `<prefix>-deploy-<env>`: plan + apply of the environment's stacks. Its trust accepts only a job of this repository
  that runs in the GitHub environment `<env>` (where staging/prod require a reviewer and every deploy environment is
  limited to main).
- `<prefix>-plan-<env>`: read-only, for plans on pull requests. Its trust accepts only the GitHub environment
  `<env>-plan`, which needs no reviewer: a pull request's code runs there, so it gets nothing that can write.

Both trusts use StringEquals on `aud` and the full `sub`, never StringLike: one typo in a wildcard would otherwise
trust every repository on GitHub. Action lists are module-level constants so tests and reviewers read the same thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.iam_openid_connect_provider import IamOpenidConnectProvider
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from constructs import Construct

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_OIDC_URL = f"https://{GITHUB_OIDC_HOST}"
STS_AUDIENCE = "sts.amazonaws.com"
PLAN_ENVIRONMENT_SUFFIX = "-plan"

# Our resources are named from these prefixes (queues gpu_tasks*, table task_store*, everything else <prefix>*).
QUEUE_PREFIX = "gpu_tasks"
TABLE_PREFIX = "task_store"

# Read actions: the plan role gets these, the deploy role gets them and the matching writes.
SQS_READ = ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListDeadLetterSourceQueues", "sqs:ListQueueTags")
SQS_WRITE = ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue")
DYNAMODB_READ = (
    "dynamodb:DescribeContinuousBackups", "dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive",
    "dynamodb:ListTagsOfResource",
)
# No dynamodb:DeleteTable: CI can never delete the task store, whatever a change to prevent_destroy says.
DYNAMODB_WRITE = (
    "dynamodb:CreateTable", "dynamodb:TagResource", "dynamodb:UntagResource", "dynamodb:UpdateContinuousBackups",
    "dynamodb:UpdateTable", "dynamodb:UpdateTimeToLive",
)
IAM_READ = (
    "iam:GetInstanceProfile", "iam:GetPolicy", "iam:GetPolicyVersion", "iam:GetRole", "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole", "iam:ListPolicyVersions",
    "iam:ListRolePolicies", "iam:ListRoleTags",
)
IAM_WRITE = (
    "iam:AddRoleToInstanceProfile", "iam:AttachRolePolicy", "iam:CreateInstanceProfile", "iam:CreatePolicy",
    "iam:CreatePolicyVersion", "iam:CreateRole", "iam:DeleteInstanceProfile", "iam:DeletePolicy",
    "iam:DeletePolicyVersion", "iam:DeleteRole", "iam:DeleteRolePolicy", "iam:DetachRolePolicy",
    "iam:PutRolePolicy", "iam:RemoveRoleFromInstanceProfile", "iam:TagInstanceProfile", "iam:TagPolicy",
    "iam:TagRole", "iam:UntagInstanceProfile", "iam:UntagPolicy", "iam:UntagRole", "iam:UpdateAssumeRolePolicy",
    "iam:UpdateRole",
)
PASS_ROLE = ("iam:PassRole",)
PASS_ROLE_SERVICES = ("ec2.amazonaws.com", "lambda.amazonaws.com")
LAMBDA_READ = ("lambda:Get*", "lambda:List*")
LAMBDA_WRITE = (
    "lambda:AddPermission", "lambda:CreateFunction", "lambda:DeleteFunction", "lambda:DeleteFunctionConcurrency",
    "lambda:PublishVersion", "lambda:PutFunctionConcurrency", "lambda:RemovePermission", "lambda:TagResource",
    "lambda:UntagResource", "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
)
LOGS_READ = ("logs:ListTagsForResource", "logs:ListTagsLogGroup")
LOGS_WRITE = (
    "logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:DeleteRetentionPolicy", "logs:PutRetentionPolicy",
    "logs:TagResource", "logs:UntagResource",
)
ALARM_READ = ("cloudwatch:ListTagsForResource",)
ALARM_WRITE = (
    "cloudwatch:DeleteAlarms", "cloudwatch:DisableAlarmActions", "cloudwatch:EnableAlarmActions",
    "cloudwatch:PutMetricAlarm", "cloudwatch:TagResource", "cloudwatch:UntagResource",
)
EVENTS_READ = ("events:DescribeRule", "events:ListTagsForResource", "events:ListTargetsByRule")
EVENTS_WRITE = (
    "events:DeleteRule", "events:DisableRule", "events:EnableRule", "events:PutRule", "events:PutTargets",
    "events:RemoveTargets", "events:TagResource", "events:UntagResource",
)
SSM_READ = ("ssm:GetParameter", "ssm:GetParameters", "ssm:ListTagsForResource")
SSM_WRITE = ("ssm:AddTagsToResource", "ssm:DeleteParameter", "ssm:PutParameter", "ssm:RemoveTagsFromResource")
BUCKET_READ = (
    "s3:GetAccelerateConfiguration", "s3:GetBucket*", "s3:GetEncryptionConfiguration",
    "s3:GetLifecycleConfiguration", "s3:GetReplicationConfiguration", "s3:ListBucket",
)
BUCKET_WRITE = (
    "s3:CreateBucket", "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:ListBucketVersions", "s3:PutBucketPolicy",
    "s3:PutBucketOwnershipControls", "s3:PutBucketPublicAccessBlock", "s3:PutBucketTagging",
    "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration", "s3:PutLifecycleConfiguration",
)
OBJECT_READ = ("s3:GetObject", "s3:GetObjectTagging")
OBJECT_WRITE = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObject", "s3:PutObjectTagging")
# These support no resource-level permissions: AWS accepts only "*" for them. All are read-only.
UNSCOPED_READ = ("cloudwatch:DescribeAlarms", "ec2:Describe*", "logs:DescribeLogGroups", "ssm:DescribeParameters")
STATE_BUCKET_READ = ("s3:ListBucket",)
STATE_OBJECT_READ = ("s3:GetObject",)
STATE_OBJECT_WRITE = ("s3:DeleteObject", "s3:PutObject")
# The state bucket is named <prefix>-tfstate-..., so the artifacts grants above would match it: these are denied.
STATE_BUCKET_DENY = (
    "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:DeleteObjectVersion", "s3:PutBucket*",
    "s3:PutEncryptionConfiguration", "s3:PutLifecycleConfiguration",
)

_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": sorted(resources), **extra}


def render(document: dict[str, Any]) -> str:
    """Stable, compact JSON: the same input synthesizes byte-identical policies (and IAM counts the bytes)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def subject(repository: str, github_environment: str) -> str:
    return f"repo:{repository}:environment:{github_environment}"


def trust_policy(provider_arn: str, repository: str, github_environment: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "GithubEnvironmentOnly",
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {
            f"{GITHUB_OIDC_HOST}:aud": STS_AUDIENCE,
            f"{GITHUB_OIDC_HOST}:sub": subject(repository, github_environment),
        }},
    }]}


def _service_resources(account: str, environment: str, prefix: str) -> dict[str, list[str]]:
    return {
        "sqs": [f"arn:aws:sqs:*:{account}:{QUEUE_PREFIX}*"],
        "dynamodb": [f"arn:aws:dynamodb:*:{account}:table/{TABLE_PREFIX}*"],
        "iam": [f"arn:aws:iam::{account}:{kind}/{prefix}*" for kind in ("instance-profile", "policy", "role")],
        "lambda": [f"arn:aws:lambda:*:{account}:function:{prefix}*"],
        "logs": [f"arn:aws:logs:*:{account}:log-group:/aws/lambda/{prefix}*"],
        "cloudwatch": [f"arn:aws:cloudwatch:*:{account}:alarm:{prefix}*"],
        "events": [f"arn:aws:events:*:{account}:rule/{prefix}*"],
        "ssm": [f"arn:aws:ssm:*:{account}:parameter/{prefix}/{environment}/*"],
        "bucket": [f"arn:aws:s3:::{prefix}*"],
        "object": [f"arn:aws:s3:::{prefix}*/*"],
    }


def plan_policy(*, account: str, environment: str, state_bucket_arn: str, prefix: str) -> dict[str, Any]:
    """Read-only: refresh every resource of the environment and read its state (plans run with -lock=false)."""
    res = _service_resources(account, environment, prefix)
    return {"Version": "2012-10-17", "Statement": [
        _statement("Queues", SQS_READ, res["sqs"]),
        _statement("TaskStore", DYNAMODB_READ, res["dynamodb"]),
        _statement("Iam", IAM_READ, res["iam"]),
        _statement("Lambda", LAMBDA_READ, res["lambda"]),
        _statement("Logs", LOGS_READ, res["logs"]),
        _statement("Alarms", ALARM_READ, res["cloudwatch"]),
        _statement("Schedules", EVENTS_READ, res["events"]),
        _statement("Parameters", SSM_READ, res["ssm"]),
        _statement("ArtifactsBucket", BUCKET_READ, res["bucket"]),
        # Only the adapter bundles Terraform manages: task inputs and results stay unreadable from a pull request.
        _statement("AdapterBundles", OBJECT_READ, [f"arn:aws:s3:::{prefix}*/adapter/*"]),
        _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
        _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
        _statement("StateObjects", STATE_OBJECT_READ, [f"{state_bucket_arn}/{environment}/*"]),
    ]}


def deploy_policy(
    *, account: str, environment: str, state_bucket_arn: str, prefix: str, other_environments: Sequence[str],
) -> dict[str, Any]:
    res = _service_resources(account, environment, prefix)
    protected = [f"arn:aws:iam::{account}:role/{prefix}-{kind}-*" for kind in ("deploy", "plan")]
    protected.append(f"arn:aws:iam::{account}:oidc-provider/{GITHUB_OIDC_HOST}")
    statements = [
        _statement("Queues", SQS_READ + SQS_WRITE, res["sqs"]),
        _statement("TaskStore", DYNAMODB_READ + DYNAMODB_WRITE, res["dynamodb"]),
        _statement("Iam", IAM_READ + IAM_WRITE, res["iam"]),
        _statement("PassOwnRoles", PASS_ROLE, [f"arn:aws:iam::{account}:role/{prefix}*"],
                   Condition={"StringEquals": {"iam:PassedToService": sorted(PASS_ROLE_SERVICES)}}),
        _statement("Lambda", LAMBDA_READ + LAMBDA_WRITE, res["lambda"]),
        _statement("Logs", LOGS_READ + LOGS_WRITE, res["logs"]),
        _statement("Alarms", ALARM_READ + ALARM_WRITE, res["cloudwatch"]),
        _statement("Schedules", EVENTS_READ + EVENTS_WRITE, res["events"]),
        _statement("Parameters", SSM_READ + SSM_WRITE, res["ssm"]),
        _statement("ArtifactsBucket", BUCKET_READ + BUCKET_WRITE, res["bucket"]),
        _statement("ArtifactsObjects", OBJECT_READ + OBJECT_WRITE, res["object"]),
        _statement("DescribeOnly", UNSCOPED_READ, ["*"]),
        _statement("StateBucket", STATE_BUCKET_READ, [state_bucket_arn]),
        _statement("StateObjects", STATE_OBJECT_READ + STATE_OBJECT_WRITE, [f"{state_bucket_arn}/{environment}/*"]),
        # A deploy role must not widen its own trust or permissions, nor any other CI role's.
        {"Sid": "NoSelfEscalation", "Effect": "Deny", "Action": "iam:*", "Resource": sorted(protected)},
        {"Sid": "StateBucketIsBootstrapOnly", "Effect": "Deny", "Action": sorted(STATE_BUCKET_DENY),
         "Resource": [state_bucket_arn, f"{state_bucket_arn}/*"]},
    ]
    others = sorted(f"{state_bucket_arn}/{e}/*" for e in other_environments if e != environment)
    if others:
        # The artifacts grants match <prefix>*/*, which includes the state bucket: keep each env to its own keys.
        statements.append({"Sid": "OtherEnvironmentsState", "Effect": "Deny", "Action": "s3:*", "Resource": others})
    return {"Version": "2012-10-17", "Statement": statements}


class GithubDeployAccess(Construct):
    """The OIDC provider (or an existing one) and, per environment, a deploy role and a read-only plan role."""

    def __init__(
        self, scope: Construct, id: str, *, repository: str, environments: list[str], state_bucket_arn: str,
        name_prefix: str = "gpu-orchestrator", existing_provider_arn: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        if not _REPOSITORY.match(repository):
            raise ValueError(f"repository must be 'owner/name', got {repository!r}")
        if not environments or len(set(environments)) != len(environments):
            raise ValueError(f"environments must be a non-empty list without duplicates, got {environments!r}")
        for env in environments:
            if not _ENVIRONMENT.match(env) or env.endswith(PLAN_ENVIRONMENT_SUFFIX):
                raise ValueError(f"environment name {env!r} is not a plain lowercase name")
        account = DataAwsCallerIdentity(self, "account").account_id
        if existing_provider_arn is None:
            # One provider per account and URL: a second environment in the same account passes its ARN instead.
            # No thumbprint_list: AWS verifies GitHub's certificate against its own trusted CAs (provider >= 5.81).
            provider = IamOpenidConnectProvider(
                self, "github", url=GITHUB_OIDC_URL, client_id_list=[STS_AUDIENCE],
            )
            self.provider_arn: str = provider.arn
        else:
            self.provider_arn = existing_provider_arn
        self.role_arns: dict[str, str] = {}
        self.plan_role_arns: dict[str, str] = {}
        for env in environments:
            deploy = IamRole(
                self, f"deploy-{env}", name=f"{name_prefix}-deploy-{env}",
                description=f"GitHub Actions plan+apply of {env} ({repository}, environment {env})",
                assume_role_policy=render(trust_policy(self.provider_arn, repository, env)),
                max_session_duration=3600,
            )
            IamRolePolicy(self, f"deploy-{env}-policy", name="deploy", role=deploy.id, policy=render(deploy_policy(
                account=account, environment=env, state_bucket_arn=state_bucket_arn, prefix=name_prefix,
                other_environments=environments,
            )))
            plan_env = f"{env}{PLAN_ENVIRONMENT_SUFFIX}"
            plan = IamRole(
                self, f"plan-{env}", name=f"{name_prefix}-plan-{env}",
                description=f"GitHub Actions read-only plan of {env} ({repository}, environment {plan_env})",
                assume_role_policy=render(trust_policy(self.provider_arn, repository, plan_env)),
                max_session_duration=3600,
            )
            IamRolePolicy(self, f"plan-{env}-policy", name="plan-read-only", role=plan.id, policy=render(plan_policy(
                account=account, environment=env, state_bucket_arn=state_bucket_arn, prefix=name_prefix,
            )))
            self.role_arns[env] = deploy.arn
            self.plan_role_arns[env] = plan.arn
