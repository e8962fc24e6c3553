"""The artifacts bucket: adapter bundles (adapter/), task inputs (inputs/) and task results (results/); and the
bucket that receives its server access logs."""

from __future__ import annotations

import ipaddress
import re

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

from modules.iam import Role, Statement, policy, render
from modules.props import check, check_actions, check_in, check_pattern, check_range, fail

READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject",)
LIST_ACTIONS = ("s3:ListBucket",)

RESULTS_PREFIX = "results/"
INPUTS_PREFIX = "inputs/"
ADAPTER_PREFIX = "adapter/"
LOG_DELIVERY_PRINCIPAL = "logging.s3.amazonaws.com"
# S3 User Guide, "General purpose bucket naming rules": 3-63 characters of a-z 0-9 . -, starting and ending with a
# letter or digit, no "..", not an IP address, and none of the prefixes and suffixes S3 reserves for other kinds of
# endpoint (access point, Object Lambda, Multi-Region and directory bucket aliases).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
# PutBucketEncryption's SSEAlgorithm values; lifecycle day counts are positive integers
# (PutBucketLifecycleConfiguration), and a prefix is part of an object key, which S3 limits to 1024 bytes.
SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")
KEY_PREFIX = re.compile(r".{0,1024}", re.DOTALL)
MULTIPART_ABORT_DAYS = 7


class PrivateBucket(Construct):
    """A versioned, encrypted bucket with every kind of public access blocked, TLS-only, owner-enforced.

    Args:
        name: the bucket's name, global to the partition: 3-63 characters of a-z0-9.-, S3's general purpose
            bucket naming rules. Required.
        force_destroy: let Terraform delete the bucket with its objects. Default False: destroy fails on a
            non-empty bucket.
        expire_prefix: objects under this key prefix ("" for all of them; up to 1024 characters) expire after
            `expire_days`. Default None: nothing expires but old versions.
        expire_days: days until those objects expire, >= 1 (S3 lifecycle Expiration). Default 30.
        noncurrent_days: days until an overwritten or deleted version is removed, everywhere, >= 1 (S3 lifecycle
            NoncurrentVersionExpiration). Default 30.
        sse_algorithm: AES256, aws:kms or aws:kms:dsse (PutBucketEncryption). Default aws:kms (the aws/s3 managed
            key, with a bucket key) unless a writer cannot use that key: S3 log delivery can't, so a bucket
            receiving access logs uses AES256 (SSE-S3).
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
        self._check_name(name)
        check_pattern(self, "expire_prefix", expire_prefix, KEY_PREFIX, "up to 1024 characters (S3 object key)")
        check_range(self, "expire_days", expire_days, 1, None, "S3 lifecycle Expiration Days")
        check_range(self, "noncurrent_days", noncurrent_days, 1, None, "S3 lifecycle NoncurrentDays")
        check_in(self, "sse_algorithm", sse_algorithm, SSE_ALGORITHMS, "S3 SSEAlgorithm")
        self.bucket = S3Bucket(self, "bucket", bucket=name, force_destroy=force_destroy)
        self.arn, self.name = self.bucket.arn, self.bucket.bucket
        S3BucketVersioningA(
            self,
            "versioning",
            bucket=self.bucket.id,
            versioning_configuration=S3BucketVersioningVersioningConfiguration(status="Enabled"),
        )
        self._encrypt(sse_algorithm)
        self._block_public_access()
        self._policy_statements = [
            Statement(
                "s3:*",
                (self.arn, f"{self.arn}/*"),
                {"Bool": {"aws:SecureTransport": "false"}},
                sid="DenyInsecureTransport",
                effect="Deny",
                principal="*",
            )
        ]
        self.policy = S3BucketPolicy(self, "tls-only", bucket=self.bucket.id, policy=self._policy_document())
        self._lifecycle(expire_prefix, expire_days, noncurrent_days)

    def _check_name(self, name: str) -> None:
        check_pattern(self, "name", name, BUCKET_NAME, "3-63 characters of a-z0-9.- starting and ending alphanumeric")
        check(self, "name", name, ".." not in name, "has two adjacent periods (S3 bucket naming rules)")
        check(self, "name", name, not name.startswith(RESERVED_PREFIXES), "starts with a prefix S3 reserves")
        check(self, "name", name, not name.endswith(RESERVED_SUFFIXES), "ends with a suffix S3 reserves")
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return
        fail(self, "name", name, "is formatted as an IP address (S3 bucket naming rules)")

    def _encrypt(self, sse_algorithm: str) -> None:
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

    def _block_public_access(self) -> None:
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

    def _lifecycle(self, expire_prefix: str | None, expire_days: int, noncurrent_days: int) -> None:
        rules = [
            S3BucketLifecycleConfigurationRule(
                id="expire-old-versions",
                status="Enabled",
                filter=[S3BucketLifecycleConfigurationRuleFilter(prefix="")],
                noncurrent_version_expiration=[
                    S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=noncurrent_days)
                ],
                abort_incomplete_multipart_upload=[
                    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(
                        days_after_initiation=MULTIPART_ABORT_DAYS
                    )
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

    def arn_for_objects(self, prefix: str = "") -> str:
        return f"{self.arn}/{prefix}*"

    def grant(self, grantee: Role, *actions: str, prefix: str | None = "") -> list[Statement]:
        """`actions` (s3:*) on the objects under `prefix` ("" for every object), or with prefix=None on the bucket
        itself (bucket-level actions such as s3:ListBucket)."""
        resource = self.arn if prefix is None else self.arn_for_objects(prefix)
        return [grantee.add(check_actions(self, actions, "s3"), [resource])]

    def grant_read(self, role: Role, prefix: str = "") -> list[Statement]:
        return self.grant(role, *READ_ACTIONS, prefix=prefix)

    def grant_write(self, role: Role, prefix: str = "") -> list[Statement]:
        return self.grant(role, *WRITE_ACTIONS, prefix=prefix)

    def grant_list(self, role: Role, prefix: str) -> list[Statement]:
        """ListBucket (ListObjectsV2) of the keys under `prefix` only: the `s3:prefix` condition key (Amazon S3 User
        Guide, "Condition key examples": "Restricting access to a specific prefix")."""
        statement = role.add(LIST_ACTIONS, [self.arn], conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}})
        return [statement]

    def log_access_to(self, target: PrivateBucket, *, prefix: str, account: str) -> None:
        """Send this bucket's server access logs to `target` under `prefix`, and let S3's log delivery write
        there on behalf of this bucket and account only (a bucket policy: ACLs are off, BucketOwnerEnforced)."""
        S3BucketLoggingA(
            self, "access-logging", bucket=self.bucket.id, target_bucket=target.bucket.id, target_prefix=prefix
        )
        target._add_policy_statement(
            Statement(
                "s3:PutObject",
                target.arn_for_objects(prefix),
                {"ArnLike": {"aws:SourceArn": self.arn}, "StringEquals": {"aws:SourceAccount": account}},
                sid="S3ServerAccessLogDelivery",
                principal={"Service": LOG_DELIVERY_PRINCIPAL},
            )
        )

    def _add_policy_statement(self, statement: Statement) -> None:
        self._policy_statements.append(statement)
        self.policy.policy = self._policy_document()

    def _policy_document(self) -> str:
        return render(policy(self._policy_statements))
