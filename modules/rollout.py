"""The adapter bundle: a content-addressed zip in the artifacts bucket, named by an SSM parameter.

The object key carries the bundle's hash, so any change to adapter/ (or the core/ modules it imports)
appears in `terraform plan` as a new object and a changed parameter. Instances read the parameter: a stopped one
installs the new bundle on its next boot, a running one between tasks (see adapter/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cdktf_cdktf_provider_aws.s3_object import S3Object
from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from constructs import Construct

from modules.assets import ZipAsset, core_sources
from modules.bucket import ADAPTER_PREFIX, PrivateBucket
from modules.config import ROOT
from modules.iam import Role, Statement, arn, render
from modules.props import check, check_actions, check_pattern

READ_PARAMETER_ACTIONS = ("ssm:GetParameter",)
# PutParameter (Systems Manager API Reference): names are a-zA-Z0-9_.- with "/" between levels, a fully qualified
# name starts with "/", at most 15 levels, no first level starting with "aws" or "ssm" (any case), and at most 1011
# characters counting the ARN that precedes the name.
PARAMETER_PREFIX = re.compile(r"(/[A-Za-z0-9_.-]+)+")
MAX_PARAMETER_LEVELS = 15
MAX_PARAMETER_ARN = 1011
PARAMETERS = ("bundle", "config")  # under <prefix>/adapter/


class AdapterRelease(Construct):
    """The adapter bundle uploaded to `bucket` and two SSM parameters: `<prefix>/adapter/bundle` (its S3 URI) and
    `<prefix>/adapter/config` (the adapter's settings as JSON).

    Args:
        bucket: where bundles go, under adapter/. Required.
        parameter_prefix: the parameters' path: "/"-separated levels of a-zA-Z0-9_.-, starting with "/", the first
            not starting with aws or ssm, at most 13 levels (the parameters add two of SSM's 15). Required.
        config: the adapter's environment, published as the config parameter. Required.
        region, account: where the parameters live (their ARNs, for grants). Required.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        bucket: PrivateBucket,
        parameter_prefix: str,
        config: Mapping[str, str],
        region: str,
        account: str,
    ) -> None:
        super().__init__(scope, id)
        self.bucket = bucket
        self._parameter_arns = [
            arn("ssm", f"parameter{parameter_prefix}/adapter/{p}", region=region, account=account) for p in PARAMETERS
        ]
        self._check_prefix(parameter_prefix)
        sources = [(ROOT, "adapter"), *core_sources([ROOT / "adapter"])]
        self.code = ZipAsset(self, "bundle", name="adapter", sources=sources)
        self.key = f"{ADAPTER_PREFIX}adapter-{self.code.bundle.short_hash}.zip"
        self.object = S3Object(
            self,
            "object",
            bucket=bucket.bucket.id,
            key=self.key,
            source=self.code.path,
            source_hash=self.code.bundle.sha256_hex,
            content_type="application/zip",
        )
        self.uri = f"s3://{bucket.name}/{self.key}"
        self._publish(parameter_prefix, config)

    def _publish(self, prefix: str, config: Mapping[str, str]) -> None:
        self.bundle_parameter = SsmParameter(
            self,
            "bundle-parameter",
            name=f"{prefix}/adapter/bundle",
            type="String",
            value=f"s3://{self.object.bucket}/{self.object.key}",
            description="The adapter bundle GPU instances install (set by terraform apply).",
        )
        self.config_parameter = SsmParameter(
            self,
            "config-parameter",
            name=f"{prefix}/adapter/config",
            type="String",
            value=render(dict(config)),
            description="The adapter's environment (queue, table, bucket...), as JSON.",
        )

    def _check_prefix(self, prefix: str) -> None:
        rule = '"/"-separated levels of a-zA-Z0-9_.-, starting with "/" (SSM parameter name)'
        check_pattern(self, "parameter_prefix", prefix, PARAMETER_PREFIX, rule)
        first = prefix.split("/")[1].lower() if prefix.startswith("/") else ""
        check(self, "parameter_prefix", prefix, not first.startswith(("aws", "ssm")), "starts with aws or ssm (SSM)")
        levels = prefix.count("/") + 2
        check(self, "parameter_prefix", prefix, levels <= MAX_PARAMETER_LEVELS, "has more than 13 levels (SSM: 15)")
        longest = max(len(a) for a in self._parameter_arns)
        check(self, "parameter_prefix", prefix, longest <= MAX_PARAMETER_ARN, "makes an ARN over 1011 characters (SSM)")

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (ssm:*) on both parameters."""
        return [grantee.add(check_actions(self, actions, "ssm"), self._parameter_arns)]

    def grant_install(self, role: Role) -> list[Statement]:
        """What an instance needs to install releases: read both parameters and the bundles."""
        return self.grant(role, *READ_PARAMETER_ACTIONS) + self.bucket.grant_read(role, ADAPTER_PREFIX)
