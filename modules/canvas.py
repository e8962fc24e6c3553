"""What the canvas service may do in AWS, per environment: one managed policy on its image prefix of a bucket.

The canvas service (canvas/, README there) keeps each image at `<prefix><owner>/<image id>.<ext>` and needs:
- s3:PutObject, s3:GetObject, s3:DeleteObject on the objects under the prefix: store, check (a direct upload is
  fetched and checked on confirm), replace with the stripped copy, delete; presigned POSTs and GETs it hands out
  act with these same permissions;
- s3:ListBucket on the bucket, limited to keys under the prefix by the `s3:prefix` condition key (Amazon S3 User
  Guide, "Condition key examples", restricting a listing to a prefix): the reconcile sweep for orphan objects.
Nothing else: not the rest of `inputs/` (other callers' uploads), not `results/` (the orchestrator presigns
result URLs itself), not the bucket's configuration.

A managed policy rather than a role, because where the service runs (ECS, a VM, a laptop with an SSO role) picks
the principal; `attach_to` optionally attaches it to existing roles by name. The prefix must lie under `inputs/`
so the GPU instance role, which reads task inputs there, can read the images as task inputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct

from modules.iam import DESCRIPTION, ROLE_NAME, ROLE_NAME_RULE, Statement, policy, render
from modules.props import check, check_pattern

OBJECT_ACTIONS = ("s3:DeleteObject", "s3:GetObject", "s3:PutObject")
LIST_ACTIONS = ("s3:ListBucket",)
DEFAULT_PREFIX = "inputs/canvas/"
# IAM quotas: a managed policy name is 1-128 characters of A-Za-z0-9+=,.@_- (CreatePolicy PolicyName).
POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
# A key prefix here: inputs/ and further folder segments, each ending in '/', no '..', no wildcard characters.
PREFIX = re.compile(r"inputs/(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}/){0,8}")
BUCKET_ARN = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class CanvasAccess(Construct):
    """The canvas service's managed policy.

    Args:
        name: the policy name, e.g. `gpu-orchestrator-canvas-dev` (1-128 of A-Za-z0-9+=,.@_-). Required.
        bucket_arn: the bucket's ARN (`arn:aws:s3:::<name>`, or a token such as the artifacts bucket's `.arn`).
        prefix: the image prefix, under `inputs/`, ending in '/'. Default `inputs/canvas/` (the service's default
            CANVAS_S3_PREFIX).
        description: up to 1000 printable characters. Default: says what it is for.
        attach_to: names of roles to attach the policy to. Default: none.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        bucket_arn: str,
        prefix: str = DEFAULT_PREFIX,
        description: str | None = None,
        attach_to: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, POLICY_NAME, "1-128 characters of A-Za-z0-9+=,.@_- (IAM policy name)")
        check_pattern(self, "bucket_arn", bucket_arn, BUCKET_ARN, "an S3 bucket ARN arn:aws:s3:::<bucket>")
        check_pattern(self, "prefix", prefix, PREFIX, "a folder under inputs/ ending in '/' (GPU tasks read inputs/)")
        check(self, "prefix", prefix, ".." not in prefix, "may not contain '..'")
        text = description or f"The canvas service: its images under {prefix} (store, read, delete, list)"
        check_pattern(self, "description", text, DESCRIPTION, "up to 1000 printable characters (CreatePolicy)")
        for role in attach_to:
            check_pattern(self, "attach_to", role, ROLE_NAME, ROLE_NAME_RULE)
        check(self, "attach_to", list(attach_to), len(set(attach_to)) == len(attach_to), "names a role twice")
        self.prefix = prefix
        self.bucket_arn = bucket_arn
        self.statements = (
            Statement(OBJECT_ACTIONS, (f"{bucket_arn}/{prefix}*",), sid="CanvasImages"),
            Statement(
                LIST_ACTIONS, (bucket_arn,), {"StringLike": {"s3:prefix": [f"{prefix}*"]}}, sid="CanvasImageListing"
            ),
        )
        self.policy = IamPolicy(self, "policy", name=name, description=text, policy=render(policy(self.statements)))
        for index, role in enumerate(attach_to):
            IamRolePolicyAttachment(self, f"attach-{index}", role=role, policy_arn=self.policy.arn)

    @property
    def arn(self) -> str:
        return str(self.policy.arn)

    @property
    def name(self) -> str:
        return str(self.policy.name)
