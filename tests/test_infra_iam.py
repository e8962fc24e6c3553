"""The five roles: trust principals, and exactly the actions each grant adds, on exactly which resources."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modules import bucket as bucket_mod
from modules import fleet, gpu, queue, table
from modules.function import DEAD_LETTER_ACTIONS, LOG_ACTIONS
from modules.layout import IAM, LAMBDA
from modules.rollout import READ_PARAMETER_ACTIONS
from tests.infra_helpers import actions_by_resource, load, one, policy_statements

QUEUE = "aws_sqs_queuetasks_queue"
DLQ = "aws_sqs_queuetasks_dlq"
TABLE = "aws_dynamodb_tabletasks_table"
HOSTS = "aws_dynamodb_tablehosts_table"
BUCKET = "aws_s3_bucketartifacts_bucket"


def kind(resource: str) -> str:
    """Name what a (tokenized) ARN in a policy points at."""
    if resource == "*":
        return "*"
    if resource.startswith("arn:aws:autoscaling:"):  # named: the group's stack is applied after the role's
        return "group:" + resource.split(":autoScalingGroupName/", 1)[1]
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
    if resource.startswith("arn:aws:events:"):  # the bus, named: the events stack is applied after the role's
        return "bus:" + resource.split(":event-bus/", 1)[1]
    if resource.startswith("arn:aws:secretsmanager:"):
        return "secret:" + resource.split(":secret:", 1)[1]
    for marker, name in ((QUEUE, "queue"), (DLQ, "dlq"), (TABLE, "table"), (HOSTS, "hosts"), (BUCKET, "bucket")):
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
        "task-events-role-local": {"Service": "lambda.amazonaws.com"},
        "task-webhooks-role-local": {"Service": "lambda.amazonaws.com"},
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
        "hosts": {"dynamodb:Scan"},  # gpuq cost: the billed running intervals
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
        "hosts": {"dynamodb:UpdateItem"},  # its liveness
        "logs:/gpu-orchestrator/adapter-metrics-local:*": set(gpu.METRICS_LOG_ACTIONS),  # its metrics, shipped itself
    }


def test_shutdown_lambda_grants(iam: dict[str, Any]) -> None:
    assert grants(iam, "lambda-gpu-shutdown-role-local") == {
        "*": {"ec2:DescribeInstances"},
        "instance:i-0f0f6fd680921de5f": {"ec2:StartInstances", "ec2:StopInstances", "ec2:RebootInstances"},
        # a stuck worker's tasks go back to the queue: a fresh message, then the item RUNNING -> QUEUED
        "queue": {"sqs:GetQueueAttributes", "sqs:SendMessage"},
        "table": set(table.WORKER_ACTIONS),
        "table/index/status-created_at-index": {"dynamodb:Query"},
        "hosts": {"dynamodb:BatchGetItem", "dynamodb:UpdateItem"},  # liveness, recovery steps, billed intervals
        "logs:/aws/lambda/shutdown-gpu-lambda-local": set(LOG_ACTIONS),
        "logs:/aws/lambda/shutdown-gpu-lambda-local:*": set(LOG_ACTIONS),
        "sqs:shutdown-gpu-lambda-dlq-local": {"sqs:SendMessage"},
    }


def test_events_roles_grants(iam: dict[str, Any]) -> None:
    assert grants(iam, "task-events-role-local") == {
        "table/stream/*": set(table.STREAM_READ_ACTIONS),
        "bus:gpu-orchestrator-tasks-local": {"events:PutEvents"},
        "sqs:gpu-task-webhooks-local": {"sqs:SendMessage"},
        "sqs:gpu-task-events-failed-local": {"sqs:SendMessage"},
        "logs:/aws/lambda/gpu-task-events-local": set(LOG_ACTIONS),
        "logs:/aws/lambda/gpu-task-events-local:*": set(LOG_ACTIONS),
    }
    assert grants(iam, "task-webhooks-role-local") == {
        "sqs:gpu-task-webhooks-local": {
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:SendMessage",
        },
        "table": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "secret:gpu-orchestrator-webhook-key-local-??????": {
            "secretsmanager:GetSecretValue",
            "secretsmanager:PutSecretValue",
        },
        "logs:/aws/lambda/gpu-task-webhooks-local": set(LOG_ACTIONS),
        "logs:/aws/lambda/gpu-task-webhooks-local:*": set(LOG_ACTIONS),
    }


def test_shutdown_role_can_send_to_exactly_the_functions_dead_letter_queue(synthesized: Any) -> None:
    """The grant names the queue by ARN (the Lambda stack creates it after the role): the names must agree."""
    for env, region, account in (("local", "us-east-1", "123456789012"), ("prod", "us-east-1", "333333333333")):
        stacks = load(synthesized(env))
        queue = one(stacks[LAMBDA], "aws_sqs_queue")["name"]
        sends = [  # its dead-letter queue, by ARN (the task queue's send, for requeues, is a reference)
            st["Resource"]
            for st in policy_statements(stacks[IAM], f"lambda-gpu-shutdown-role-{env}")
            if "sqs:SendMessage" in st["Action"] and st["Resource"][0].startswith("arn:")
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


# DescribeInstances and the SSM agent's registration and association calls take no resource (modules/gpu.py), nor
# do Auto Scaling's Describe* calls (modules/fleet.py).
UNSCOPED = {
    *gpu.DESCRIBE_ACTIONS,
    *gpu.SSM_AGENT_ACTIONS,
    *gpu.SSM_ASSOCIATION_ACTIONS,
    *fleet.CONTROLLER_DESCRIBE_ACTIONS,
    *fleet.MEMBER_DESCRIBE_ACTIONS,
    *fleet.API_DESCRIBE_ACTIONS,
}


def test_star_only_where_aws_allows_nothing_narrower(synthesized: Any) -> None:
    for env in ("local", "local-fleet", "prod"):
        doc = load(synthesized(env))[IAM]
        for role in doc["resource"]["aws_iam_role"].values():
            for statement in policy_statements(doc, role["name"]):
                if "*" in statement["Resource"]:
                    assert statement["Resource"] == ["*"], statement
                    assert set(statement["Action"]) <= UNSCOPED, statement
                assert not any(a.endswith(":*") or a == "*" for a in statement["Action"])


def test_each_role_names_each_resource_set_in_one_statement(synthesized: Any) -> None:
    """Grants on the same resources merge (modules/iam.py merge), however many grants and reads of its ARN led
    there: a plan shows one statement per resource set."""
    for env in ("local", "local-fleet", "prod"):
        doc = load(synthesized(env))[IAM]
        for role in doc["resource"]["aws_iam_role"].values():
            statements = policy_statements(doc, role["name"])
            keys = [json.dumps([st["Resource"], st.get("Condition"), st.get("Sid")]) for st in statements]
            assert len(keys) == len(set(keys)), (env, role["name"], statements)


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


# --- fleet mode (local-fleet): the group by name instead of instances ---


@pytest.fixture(scope="module")
def fleet_iam(synthesized: Any) -> dict[str, Any]:
    return load(synthesized("local-fleet"))[IAM]


def test_fleet_controller_sets_the_desired_capacity_and_reads_the_group(fleet_iam: dict[str, Any]) -> None:
    assert grants(fleet_iam, "lambda-gpu-shutdown-role-local-fleet") == {
        "*": {*fleet.CONTROLLER_DESCRIBE_ACTIONS, "ec2:DescribeInstances"},
        # the desired capacity; a stuck member: marked unhealthy (the group replaces it), rebooted by the group's tag
        "group:gpu-fleet-local-fleet": {"autoscaling:SetDesiredCapacity", "autoscaling:SetInstanceHealth"},
        "instance:*": {"ec2:RebootInstances"},
        "queue": {"sqs:GetQueueAttributes", "sqs:SendMessage"},
        "table": set(table.WORKER_ACTIONS),
        "table/index/status-created_at-index": {"dynamodb:Query"},
        "hosts": {"dynamodb:BatchGetItem", "dynamodb:UpdateItem"},
        "logs:/aws/lambda/shutdown-gpu-lambda-local-fleet": set(LOG_ACTIONS),
        "logs:/aws/lambda/shutdown-gpu-lambda-local-fleet:*": set(LOG_ACTIONS),
        "sqs:shutdown-gpu-lambda-dlq-local-fleet": {"sqs:SendMessage"},
    }


def test_fleet_host_protects_itself_hands_back_and_leaves_through_the_group(fleet_iam: dict[str, Any]) -> None:
    got = grants(fleet_iam, "gpu-instance-role-local-fleet")
    assert got["group:gpu-fleet-local-fleet"] == set(fleet.MEMBER_ACTIONS)
    assert got["*"] == {*gpu.SSM_AGENT_ACTIONS, *fleet.MEMBER_DESCRIBE_ACTIONS}  # no bootstrap document: user data
    assert not any(kind.startswith(("instance:", "document:")) for kind in got)


def test_fleet_api_only_describes(fleet_iam: dict[str, Any]) -> None:
    got = grants(fleet_iam, "orchestrator-task-role-local-fleet")
    assert got["*"] == {"autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"}
    assert not any(kind.startswith("group:") for kind in got)


def _fleet_dev() -> Any:
    """dev switched to fleet mode (a bootstrapped environment: its roles carry the boundary)."""
    from dataclasses import replace

    from modules.config import load_config, validate

    config = replace(
        load_config("dev", env={"CDK_DEFAULT_ACCOUNT": "111111111111"}),
        gpu_mode="fleet",
        gpu_instance_ids=(),
        fleet_max_size=4,
        gpus_per_instance=4,
    )
    validate(config)
    return config


def test_the_fleet_boundary_allows_the_group_grants_and_nothing_of_another_group_or_instance() -> None:
    """The boundary bootstrap makes for a fleet environment: every Auto Scaling grant of the runtime roles is inside
    it, on this environment's group only, and EC2 starts and stops are outside it (Auto Scaling does those)."""
    from localaws.iam_eval import ALLOW, evaluate
    from modules.bootstrap import boundary_policy

    config = _fleet_dev()
    boundary = boundary_policy(config)
    group = "arn:aws:autoscaling:us-east-1:111111111111:autoScalingGroup:0b6a1f4e:autoScalingGroupName/gpu-fleet-dev"
    for action in (*fleet.SCALE_ACTIONS, *fleet.MEMBER_ACTIONS):
        assert evaluate([boundary], action, group) == ALLOW, action
        assert evaluate([boundary], action, group.replace("gpu-fleet-dev", "gpu-fleet-prod")) != ALLOW, action
    for action in (*fleet.CONTROLLER_DESCRIBE_ACTIONS, *fleet.API_DESCRIBE_ACTIONS, "ec2:DescribeInstances"):
        assert evaluate([boundary], action, "*") == ALLOW, action
    for action in ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"):
        assert evaluate([boundary], action, "arn:aws:ec2:us-east-1:111111111111:instance/i-0123456789abcdef0") != ALLOW
    assert evaluate([boundary], "autoscaling:UpdateAutoScalingGroup", group) != ALLOW  # only what the roles use
