"""GitHub Actions -> AWS without stored keys: the OIDC provider and two roles per environment.

- `<prefix>-deploy-<env>`: plan + apply of the environment's stacks. Its trust accepts only a job of this repository
  that runs in the GitHub environment `<env>` (where staging/prod require a reviewer and every deploy environment is
  limited to main).
- `<prefix>-plan-<env>`: read-only, for plans on pull requests. Its trust accepts only the GitHub environment
  `<env>-plan`, which needs no reviewer: a pull request's code runs there, so it gets nothing that can write.

Both trusts use StringEquals on `aud` and the full `sub`, never StringLike: one typo in a wildcard would otherwise
trust every repository on GitHub. What the roles may call, and on what, is written out in modules/deploy_actions.py
(the actions, with the Service Authorization Reference page for each), modules/deploy_resources.py (the names and
ARNs) and modules/deploy_policies.py (the statements, and the split across IAM's size limits).

The deploy role writes IAM, so it is built so that it cannot escalate through what it writes (tests/
test_deploy_escalation.py proves each point against an IAM-enforcing server):
- it names the runtime roles (the core's three and the events layer's two) and the instance profile exactly
  (`<name>-<env>`), never by prefix, and passes each role to its own service only (the GPU role into its instance
  profile, every other one to Lambda);
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
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.iam_openid_connect_provider import IamOpenidConnectProvider
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct

# Re-exported (__all__): what modules/bootstrap.py and the tests import from here.
from modules.deploy_policies import INLINE_LIMIT, MANAGED_DESCRIPTIONS, MANAGED_LIMIT, deploy_policy, plan_policy, split
from modules.deploy_resources import (
    FUNCTION_NAMES,
    GITHUB_OIDC_HOST,
    INSTANCE_ROLE,
    ORCHESTRATOR_ROLE,
    RUNTIME_QUEUES,
    SHUTDOWN_ROLE,
    TABLE_NAMES,
    artifacts_buckets,
)
from modules.iam import MIN_SESSION_SECONDS, ROLE_NAME, ROLE_NAME_RULE, Role, Statement, policy, render
from modules.props import check, check_actions, check_pattern

__all__ = [
    "FUNCTION_NAMES",
    "GITHUB_OIDC_HOST",
    "GITHUB_OIDC_URL",
    "INLINE_LIMIT",
    "INSTANCE_ROLE",
    "MANAGED_LIMIT",
    "ORCHESTRATOR_ROLE",
    "PLAN_ENVIRONMENT_SUFFIX",
    "RUNTIME_QUEUES",
    "SHUTDOWN_ROLE",
    "STS_AUDIENCE",
    "TABLE_NAMES",
    "GithubDeployAccess",
    "artifacts_buckets",
    "deploy_policy",
    "plan_policy",
    "split",
    "subject",
    "trust_policy",
]
GITHUB_OIDC_URL = f"https://{GITHUB_OIDC_HOST}"
STS_AUDIENCE = "sts.amazonaws.com"
PLAN_ENVIRONMENT_SUFFIX = "-plan"
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PROVIDER_ARN = re.compile(rf"arn:aws[a-z-]*:iam::\d{{12}}:oidc-provider/{re.escape(GITHUB_OIDC_HOST)}")


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
        inline, parts = split(document) if len(whole) >= INLINE_LIMIT else (document, {})
        IamRolePolicy(self, f"{name}-policy", name=policy_name, role=role.id, policy=render(inline, compact=True))
        for part, managed in parts.items():
            extra = IamPolicy(
                self,
                f"{name}-{part}",
                name=f"{name}-{part}",
                description=f"{purpose}: {MANAGED_DESCRIPTIONS[part]} (IAM's inline size limit)",
                policy=render(managed, compact=True),
            )
            IamRolePolicyAttachment(self, f"{name}-{part}-attachment", role=role.name, policy_arn=extra.arn)
        arn: str = role.arn
        return arn
