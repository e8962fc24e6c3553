"""CanvasAccess alone in a fresh stack: exactly the statements the canvas service needs on its prefix, and the
props it refuses with one line."""

from __future__ import annotations

import json
from typing import Any

import pytest

import modules  # noqa: F401 (registers the provider package cheaply)
from modules.bucket import PrivateBucket
from modules.canvas import CanvasAccess
from tests.infra_helpers import fresh_stack, one, refusal, resources, synth

BUCKET_ARN = "arn:aws:s3:::gpu-orchestrator-artifacts-dev-123456789012"


def document(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(json.loads(one(doc, "aws_iam_policy", name=name)["policy"]))


def test_the_policy_allows_the_prefix_and_nothing_else() -> None:
    stack = fresh_stack()
    CanvasAccess(stack, "canvas", name="gpu-orchestrator-canvas-dev", bucket_arn=BUCKET_ARN)
    doc = synth(stack)
    statements = document(doc, "gpu-orchestrator-canvas-dev")["Statement"]
    assert statements == [
        {
            "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Effect": "Allow",
            "Resource": [f"{BUCKET_ARN}/inputs/canvas/*"],
            "Sid": "CanvasImages",
        },
        {
            "Action": ["s3:ListBucket"],
            "Condition": {"StringLike": {"s3:prefix": ["inputs/canvas/*"]}},
            "Effect": "Allow",
            "Resource": [BUCKET_ARN],
            "Sid": "CanvasImageListing",
        },
    ]
    assert resources(doc, "aws_iam_role_policy_attachment") == []


def test_it_takes_a_bucket_constructs_arn_and_attaches_to_named_roles() -> None:
    stack = fresh_stack()
    bucket = PrivateBucket(stack, "artifacts", name="gpu-orchestrator-artifacts-test-123456789012")
    access = CanvasAccess(
        stack,
        "canvas",
        name="canvas-test",
        bucket_arn=bucket.arn,
        prefix="inputs/canvas-test/",
        attach_to=["canvas-service-test"],
    )
    doc = synth(stack)
    text = one(doc, "aws_iam_policy", name="canvas-test")["policy"]
    assert "${aws_s3_bucket." in text and ".arn}" in text  # the bucket construct's ARN, a reference
    assert "inputs/canvas-test/*" in text
    (attachment,) = resources(doc, "aws_iam_role_policy_attachment")
    assert attachment["role"] == "canvas-service-test"
    assert access.prefix == "inputs/canvas-test/"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"name": "bad name!"}, "name='bad name!' is not 1-128 characters"),
        ({"bucket_arn": "my-bucket"}, "bucket_arn='my-bucket' is not an S3 bucket ARN"),
        ({"prefix": "results/"}, "prefix='results/' is not a folder under inputs/"),
        ({"prefix": "inputs/canvas"}, "is not a folder under inputs/ ending in '/'"),
        ({"prefix": "inputs/*/"}, "is not a folder under inputs/"),
        ({"prefix": "inputs/"}, None),
        ({"attach_to": ["a", "a"]}, "names a role twice"),
        ({"attach_to": ["x" * 65]}, "is not 1-64 characters"),
    ],
)
def test_props_are_checked(props: dict[str, Any], message: str | None) -> None:
    full = {"name": "canvas-dev", "bucket_arn": BUCKET_ARN, **props}
    if message is None:
        CanvasAccess(fresh_stack("ok"), "canvas", **full)  # the whole inputs/ is allowed, if not advised
        return
    assert message in refusal(lambda stack: CanvasAccess(stack, "canvas", **full))
