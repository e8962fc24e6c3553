"""The one stack that lives before every other: the environment's Terraform state bucket, and (optionally) the
GitHub OIDC access that lets the delivery workflows plan and apply without stored keys.

Its own state is local (state/bootstrap/<env>.tfstate): the bucket cannot hold the state of its own creation.
"""

from __future__ import annotations

from cdktf import LocalBackend, TerraformOutput, TerraformStack
from constructs import Construct

from modules.base import aws_provider, local_state_path
from modules.bucket import PrivateBucket
from modules.config import EnvironmentConfig
from modules.github_oidc import GithubDeployAccess
from modules.layout import BOOTSTRAP


class BootstrapStack(TerraformStack):
    def __init__(self, scope: Construct, *, config: EnvironmentConfig, outdir: str) -> None:
        super().__init__(scope, BOOTSTRAP)
        aws_provider(self, config)
        LocalBackend(self, path=local_state_path(outdir, BOOTSTRAP, f"bootstrap/{config.name}"))
        state = PrivateBucket(self, "state", name=config.resolved_state_bucket, noncurrent_days=90)
        # Losing this bucket loses every stack's state: no plan may delete it.
        state.bucket.add_override("lifecycle.prevent_destroy", True)
        TerraformOutput(self, "StateBucketName", value=state.name, description="Terraform state of this environment")
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
