"""The three roles: trust principals, and exactly the actions each grant adds, on exactly which resources."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modules import bucket as bucket_mod
from modules import gpu, queue, table
from modules.function import DEAD_LETTER_ACTIONS, LOG_ACTIONS
from modules.layout import IAM, LAMBDA
from modules.rollout import READ_PARAMETER_ACTIONS
from tests.infra_helpers import actions_by_resource, load, one, policy_statements

QUEUE = "aws_sqs_queuetasks_queue"
DLQ = "aws_sqs_queuetasks_dlq"
TABLE = "aws_dynamodb_tabletasks_table"
BUCKET = "aws_s3_bucketartifacts_bucket"


def kind(resource: str) -> str:
    """Name what a (tokenized) ARN in a policy points at."""
    if resource == "*":
        return "*"
    if resource.startswith("arn:aws:ec2:"):
        return "instance:" + resource.rsplit("/", 1)[1]
    if resource.startswith("arn:aws:ssm:") and ":document/" in resource:
        return "document:" + resource.split(":document/", 1)[1]
    if resource.startswith("arn:aws:ssm:"):
        return "parameter:" + resource.split(":parameter", 1)[1]
    if resource.startswith("arn:aws:lambda:"):  # named: the function's stack is applied after the role's
        return "function:" + resource.split(":function:", 1)[1]
    if resource.startswith("arn:aws:logs:"):
        return "logs:" + resource.split(":log-group:", 1)[1]
    if resource.startswith("arn:aws:sqs:"):  # named, not referenced: the queue's stack is applied after the role's
        return "sqs:" + resource.rsplit(":", 1)[1]
    for marker, name in ((QUEUE, "queue"), (DLQ, "dlq"), (TABLE, "table"), (BUCKET, "bucket")):
        if marker in resource:
            return name + resource.split("}", 1)[1]
    raise AssertionError(f"unexpected resource {resource}")


@pytest.fixture(scope="module")
def iam(synthesized: Any) -> dict[str, Any]:
    return load(synthesized("local"))[IAM]


def grants(iam: dict[str, Any], role: str) -> dict[str, set[str]]:
    return {kind(r): a for r, a in actions_by_resource(policy_statements(iam, role)).items()}


def test_trust_principals(iam: dict[str, Any]) -> None:
    trusted = {}
    for role in iam["resource"]["aws_iam_role"].values():
        (statement,) = json.loads(role["assume_role_policy"])["Statement"]
        assert statement["Action"] == "sts:AssumeRole" and statement["Effect"] == "Allow"
        trusted[role["name"]] = statement["Principal"]
    assert trusted == {
        "orchestrator-task-role-local": {"Service": "lambda.amazonaws.com"},  # the API function's
        "gpu-instance-role-local": {"Service": "ec2.amazonaws.com"},
        "lambda-gpu-shutdown-role-local": {"Service": "lambda.amazonaws.com"},
    }
    profile = one(iam, "aws_iam_instance_profile")
    assert profile["name"] == "gpu-instance-profile-local" and "gpu-instance_role" in profile["role"]


def test_orchestrator_grants(iam: dict[str, Any]) -> None:
    assert grants(iam, "orchestrator-task-role-local") == {
        "queue": set(queue.SEND_ACTIONS),
        "dlq": set(queue.READ_DEPTH_ACTIONS),
        "table": {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"},
        "table/index/status-created_at-index": {"dynamodb:Query"},
        "*": {"ec2:DescribeInstances"},  # /healthz; no StartInstances: starting is the controller's
        "function:shutdown-gpu-lambda-local": {"lambda:InvokeFunction"},
        # exactly what presigning uploads and result downloads needs, and listing one task's results
        "bucket/inputs/*": set(bucket_mod.WRITE_ACTIONS),
        "bucket/results/*": set(bucket_mod.READ_ACTIONS),
        "bucket": set(bucket_mod.LIST_ACTIONS),
        "logs:/aws/lambda/gpu-orchestrator-api-local": set(LOG_ACTIONS),
        "logs:/aws/lambda/gpu-orchestrator-api-local:*": set(LOG_ACTIONS),
    }


def test_orchestrator_lists_only_results(iam: dict[str, Any]) -> None:
    (listing,) = [
        st for st in policy_statements(iam, "orchestrator-task-role-local") if "s3:ListBucket" in st["Action"]
    ]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["results/*"]}}


def test_gpu_instance_grants(iam: dict[str, Any]) -> None:
    assert grants(iam, "gpu-instance-role-local") == {
        # SendMessage: a stop hands its task back with a fresh message (adapter/README.md, "Stopping")
        "queue": {*queue.CONSUME_ACTIONS, "sqs:SendMessage"},
        "dlq": {"sqs:SendMessage", "sqs:ReceiveMessage"},
        "table": set(table.WORKER_ACTIONS),
        "table/index/status-created_at-index": set(table.INDEX_READ_ACTIONS),
        "bucket/inputs/*": set(bucket_mod.READ_ACTIONS),
        "bucket/adapter/*": set(bucket_mod.READ_ACTIONS),
        "bucket/results/*": set(bucket_mod.WRITE_ACTIONS),
        "parameter:/gpu-orchestrator/local/adapter/bundle": set(READ_PARAMETER_ACTIONS),
        "parameter:/gpu-orchestrator/local/adapter/config": set(READ_PARAMETER_ACTIONS),
        # the SSM agent, which runs the bootstrap association (adopt mode), and the one document it runs
        "*": {*gpu.SSM_AGENT_ACTIONS, *gpu.SSM_ASSOCIATION_ACTIONS},
        "document:gpu-adapter-bootstrap-local": set(gpu.SSM_DOCUMENT_ACTIONS),
    }


def test_shutdown_lambda_grants(iam: dict[str, Any]) -> None:
    assert grants(iam, "lambda-gpu-shutdown-role-local") == {
        "*": {"ec2:DescribeInstances"},
        "instance:i-0f0f6fd680921de5f": {"ec2:StartInstances", "ec2:StopInstances"},
        "queue": {"sqs:GetQueueAttributes"},
        "table/index/status-created_at-index": {"dynamodb:Query"},
        "logs:/aws/lambda/shutdown-gpu-lambda-local": set(LOG_ACTIONS),
        "logs:/aws/lambda/shutdown-gpu-lambda-local:*": set(LOG_ACTIONS),
        "sqs:shutdown-gpu-lambda-dlq-local": {"sqs:SendMessage"},
    }


def test_shutdown_role_can_send_to_exactly_the_functions_dead_letter_queue(synthesized: Any) -> None:
    """The grant names the queue by ARN (the Lambda stack creates it after the role): the names must agree."""
    for env, region, account in (("local", "us-east-1", "123456789012"), ("prod", "us-east-1", "333333333333")):
        stacks = load(synthesized(env))
        queue = one(stacks[LAMBDA], "aws_sqs_queue")["name"]
        sends = [
            st["Resource"]
            for st in policy_statements(stacks[IAM], f"lambda-gpu-shutdown-role-{env}")
            if "sqs:SendMessage" in st["Action"]
        ]
        assert sends == [[f"arn:aws:sqs:{region}:{account}:{queue}"]]
    assert DEAD_LETTER_ACTIONS == ("sqs:SendMessage",)


def test_action_lists_are_the_seeds(iam: dict[str, Any]) -> None:
    assert set(queue.SEND_ACTIONS) == {"sqs:SendMessage", "sqs:GetQueueAttributes"}
    assert set(queue.CONSUME_ACTIONS) >= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}
    assert set(table.SUBMIT_ACTIONS) == {
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
    }
    assert set(table.WORKER_ACTIONS) == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    assert gpu.DESCRIBE_ACTIONS == ("ec2:DescribeInstances",)
    assert set(LOG_ACTIONS) == {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}


# DescribeInstances and the SSM agent's registration and association calls take no resource (modules/gpu.py).
UNSCOPED = {*gpu.DESCRIBE_ACTIONS, *gpu.SSM_AGENT_ACTIONS, *gpu.SSM_ASSOCIATION_ACTIONS}


def test_star_only_where_aws_allows_nothing_narrower(synthesized: Any) -> None:
    for env in ("local", "prod"):
        doc = load(synthesized(env))[IAM]
        for role in doc["resource"]["aws_iam_role"].values():
            for statement in policy_statements(doc, role["name"]):
                if "*" in statement["Resource"]:
                    assert statement["Resource"] == ["*"], statement
                    assert set(statement["Action"]) <= UNSCOPED, statement
                assert not any(a.endswith(":*") or a == "*" for a in statement["Action"])


def test_start_and_stop_name_every_configured_gpu_and_nothing_else(synthesized: Any) -> None:
    doc = load(synthesized("prod"))[IAM]
    for statement in policy_statements(doc, "lambda-gpu-shutdown-role-prod"):
        if "ec2:StopInstances" in statement["Action"]:
            assert statement["Resource"] == [
                "arn:aws:ec2:us-east-1:333333333333:instance/i-0aaaaaaaaaaaaaaa1",
                "arn:aws:ec2:us-east-1:333333333333:instance/i-0aaaaaaaaaaaaaaa2",
            ]


def test_created_hosts_are_started_and_stopped_by_their_environment_tag(synthesized: Any) -> None:
    """Create mode (staging): the instances do not exist when the role is written, so start/stop reach any instance
    of the account and region carrying the environment's tag, which the launch template puts on them."""
    doc = load(synthesized("staging"))[IAM]
    (statement,) = [
        st for st in policy_statements(doc, "lambda-gpu-shutdown-role-staging") if "ec2:StopInstances" in st["Action"]
    ]
    assert statement["Resource"] == ["arn:aws:ec2:us-east-1:222222222222:instance/*"]
    assert statement["Condition"] == {"StringEquals": {f"aws:ResourceTag/{gpu.ENVIRONMENT_TAG}": "staging"}}
