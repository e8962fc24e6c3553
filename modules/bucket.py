"""The artifacts bucket: adapter bundles (adapter/), task inputs (inputs/) and task results (results/); and the
bucket that receives its server access logs."""

from __future__ import annotations

import json
from typing import Any

from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import (
    S3BucketLifecycleConfiguration,
    S3BucketLifecycleConfigurationRule,
    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload,
    S3BucketLifecycleConfigurationRuleExpiration,
    S3BucketLifecycleConfigurationRuleFilter,
    S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration,
)
from cdktf_cdktf_provider_aws.s3_bucket_logging import S3BucketLoggingA
from cdktf_cdktf_provider_aws.s3_bucket_ownership_controls import (
    S3BucketOwnershipControls,
    S3BucketOwnershipControlsRule,
)
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_public_access_block import S3BucketPublicAccessBlock
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
    S3BucketServerSideEncryptionConfigurationRuleA,
    S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA,
)
from cdktf_cdktf_provider_aws.s3_bucket_versioning import (
    S3BucketVersioningA,
    S3BucketVersioningVersioningConfiguration,
)
from constructs import Construct

from modules.iam import Role

READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject",)

RESULTS_PREFIX = "results/"
INPUTS_PREFIX = "inputs/"
ADAPTER_PREFIX = "adapter/"
LOG_DELIVERY_PRINCIPAL = "logging.s3.amazonaws.com"


class PrivateBucket(Construct):
    """A versioned, encrypted bucket with every kind of public access blocked, TLS-only, owner-enforced.

    Objects under `expire_prefix` ("" for all of them) expire after `expire_days`; old versions after
    `noncurrent_days` everywhere. `sse_algorithm` is aws:kms (the aws/s3 managed key) unless a writer cannot use
    that key: S3 log delivery can't, so a bucket receiving access logs uses AES256 (SSE-S3).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        force_destroy: bool = False,
        expire_prefix: str | None = None,
        expire_days: int = 30,
        noncurrent_days: int = 30,
        sse_algorithm: str = "aws:kms",
    ) -> None:
        super().__init__(scope, id)
        if len(name) > 63:
            raise ValueError(f"bucket name {name!r} is longer than S3's 63 characters")
        self.bucket = S3Bucket(self, "bucket", bucket=name, force_destroy=force_destroy)
        S3BucketVersioningA(
            self,
            "versioning",
            bucket=self.bucket.id,
            versioning_configuration=S3BucketVersioningVersioningConfiguration(status="Enabled"),
        )
        S3BucketServerSideEncryptionConfigurationA(
            self,
            "encryption",
            bucket=self.bucket.id,
            rule=[
                S3BucketServerSideEncryptionConfigurationRuleA(
                    apply_server_side_encryption_by_default=(
                        S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA(
                            sse_algorithm=sse_algorithm
                        )
                    ),
                    bucket_key_enabled=sse_algorithm == "aws:kms",
                )
            ],
        )
        S3BucketPublicAccessBlock(
            self,
            "public-access",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
        )
        S3BucketOwnershipControls(
            self,
            "ownership",
            bucket=self.bucket.id,
            rule=S3BucketOwnershipControlsRule(object_ownership="BucketOwnerEnforced"),
        )
        self._policy_statements: list[dict[str, Any]] = [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [self.bucket.arn, f"{self.bucket.arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ]
        self.policy = S3BucketPolicy(self, "tls-only", bucket=self.bucket.id, policy=self._policy_document())
        rules = [
            S3BucketLifecycleConfigurationRule(
                id="expire-old-versions",
                status="Enabled",
                filter=[S3BucketLifecycleConfigurationRuleFilter(prefix="")],
                noncurrent_version_expiration=[
                    S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=noncurrent_days)
                ],
                abort_incomplete_multipart_upload=[
                    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(days_after_initiation=7)
                ],
            )
        ]
        if expire_prefix is not None:
            rules.append(
                S3BucketLifecycleConfigurationRule(
                    id=f"expire-{expire_prefix.strip('/') or 'everything'}",
                    status="Enabled",
                    filter=[S3BucketLifecycleConfigurationRuleFilter(prefix=expire_prefix)],
                    expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=expire_days)],
                )
            )
        S3BucketLifecycleConfiguration(self, "lifecycle", bucket=self.bucket.id, rule=rules)

    @property
    def arn(self) -> str:
        return self.bucket.arn

    @property
    def name(self) -> str:
        return self.bucket.bucket

    def arn_for_objects(self, prefix: str = "") -> str:
        return f"{self.bucket.arn}/{prefix}*"

    def grant_read(self, role: Role, prefix: str = "") -> None:
        role.add(READ_ACTIONS, [self.arn_for_objects(prefix)])

    def grant_write(self, role: Role, prefix: str = "") -> None:
        role.add(WRITE_ACTIONS, [self.arn_for_objects(prefix)])

    def log_access_to(self, target: PrivateBucket, *, prefix: str, account: str) -> None:
        """Send this bucket's server access logs to `target` under `prefix`, and let S3's log delivery write
        there on behalf of this bucket and account only (a bucket policy: ACLs are off, BucketOwnerEnforced)."""
        S3BucketLoggingA(
            self, "access-logging", bucket=self.bucket.id, target_bucket=target.bucket.id, target_prefix=prefix
        )
        target._add_policy_statement(
            {
                "Sid": "S3ServerAccessLogDelivery",
                "Effect": "Allow",
                "Principal": {"Service": LOG_DELIVERY_PRINCIPAL},
                "Action": "s3:PutObject",
                "Resource": target.arn_for_objects(prefix),
                "Condition": {"ArnLike": {"aws:SourceArn": self.arn}, "StringEquals": {"aws:SourceAccount": account}},
            }
        )

    def _add_policy_statement(self, statement: dict[str, Any]) -> None:
        self._policy_statements.append(statement)
        self.policy.policy = self._policy_document()

    def _policy_document(self) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": self._policy_statements}, sort_keys=True)
