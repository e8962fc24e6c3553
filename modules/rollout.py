"""The adapter bundle: a content-addressed zip in the artifacts bucket, named by an SSM parameter.

The object key carries the bundle's hash, so any change to adapter/ (or the shared functions/ code it imports)
appears in `terraform plan` as a new object and a changed parameter. Instances read the parameter: a stopped one
installs the new bundle on its next boot, a running one between tasks (see adapter/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cdktf_cdktf_provider_aws.s3_object import S3Object
from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from constructs import Construct

from modules.assets import ZipAsset
from modules.bucket import ADAPTER_PREFIX, PrivateBucket
from modules.config import ROOT
from modules.iam import Role

READ_PARAMETER_ACTIONS = ("ssm:GetParameter",)


class AdapterRelease(Construct):
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
        self.code = ZipAsset(self, "bundle", name="adapter", sources=[(ROOT, "adapter"), (ROOT, "functions")])
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
        self.bundle_parameter = SsmParameter(
            self,
            "bundle-parameter",
            name=f"{parameter_prefix}/adapter/bundle",
            type="String",
            value=f"s3://{self.object.bucket}/{self.object.key}",
            description="The adapter bundle GPU instances install (set by terraform apply).",
        )
        self.config_parameter = SsmParameter(
            self,
            "config-parameter",
            name=f"{parameter_prefix}/adapter/config",
            type="String",
            value=json.dumps(dict(config), sort_keys=True),
            description="The adapter's environment (queue, table, bucket...), as JSON.",
        )
        self._parameter_arns = [
            f"arn:aws:ssm:{region}:{account}:parameter{parameter_prefix}/adapter/bundle",
            f"arn:aws:ssm:{region}:{account}:parameter{parameter_prefix}/adapter/config",
        ]

    def grant_install(self, role: Role, bucket: PrivateBucket) -> None:
        """What an instance needs to install releases: read both parameters and the bundles."""
        role.add(READ_PARAMETER_ACTIONS, self._parameter_arns)
        bucket.grant_read(role, ADAPTER_PREFIX)
