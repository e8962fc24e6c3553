"""What every stack of an environment shares: the AWS provider (region, account guard, default tags) and its state
backend (local files for `local`, otherwise one S3 key per stack and environment with S3-native locking)."""

from __future__ import annotations

import os
from pathlib import Path

from cdktf import LocalBackend, S3Backend, TerraformOutput, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags
from constructs import Construct

from modules.config import ROOT, EnvironmentConfig

PROJECT = "gpu-orchestrator"


def local_state_path(outdir: str, stack_name: str, environment: str) -> str:
    """state/<env>/<stack>.tfstate in the repo, relative to the stack's working directory (<outdir>/stacks/<stack>):
    outside the outdir, so neither a re-synth nor `make clean` touches it (the bootstrap stack's state)."""
    stack_dir = Path(outdir).resolve() / "stacks" / stack_name
    return os.path.relpath(ROOT / "state" / environment / f"{stack_name}.tfstate", stack_dir)


def default_tags(config: EnvironmentConfig) -> dict[str, str]:
    return {"project": PROJECT, "environment": config.name, "managed-by": "cdktf"}


def aws_provider(stack: TerraformStack, config: EnvironmentConfig) -> AwsProvider:
    """The environment's region, tags on every resource, and a guard against the wrong account."""
    return AwsProvider(
        stack,
        "aws",
        region=config.region,
        # Terraform stops before touching any other account: credentials for the wrong account fail fast.
        allowed_account_ids=[config.account],
        default_tags=[AwsProviderDefaultTags(tags=default_tags(config))],
    )


class EnvironmentStack(TerraformStack):
    """A stack bound to one environment. `stack_name` is the seed's name (gpu-orchestrator-sqs, ...)."""

    def __init__(self, scope: Construct, stack_name: str, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, stack_name)
        self.config = config
        aws_provider(self, config)
        if config.remote_state:
            S3Backend(
                self,
                bucket=config.resolved_state_bucket,
                key=config.state_key(stack_name),
                region=config.region,
                encrypt=True,
            )
            # S3-native locking (Terraform >= 1.10). cdktf 0.21's S3Backend has no such field, hence the override.
            self.add_override("terraform.backend.s3.use_lockfile", True)
        else:
            # Inside the outdir (<outdir>/state/), relative to the stack's working directory: the JSON is the same
            # wherever it is synthesized, and cdktf copies the path into other stacks' remote-state reads, which run
            # in sibling directories at the same depth. Only the emulated `local` environment keeps state this way.
            LocalBackend(self, path=f"../../state/{stack_name}.tfstate")

    def output(self, name: str, value: str, description: str) -> TerraformOutput:
        return TerraformOutput(self, name, value=value, description=description)

    def name_of(self, base: str) -> str:
        return self.config.name_of(base)
