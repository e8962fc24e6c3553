"""The seed's settings through cdktf's own test matchers (cdktf.Testing), stack by stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdktf import Testing

import main
from modules.config import load_config

SEED_SETTINGS = [
    (
        "gpu-orchestrator-sqs",
        "aws_sqs_queue",
        {
            "name": "gpu_tasks_queue-local",
            "visibility_timeout_seconds": 300,
            "receive_wait_time_seconds": 20,
            "message_retention_seconds": 86400,
        },
    ),
    (
        "gpu-orchestrator-sqs",
        "aws_sqs_queue",
        {"name": "gpu_tasks_queue_dlq-local", "message_retention_seconds": 1209600},
    ),
    (
        "gpu-orchestrator-dynamodb",
        "aws_dynamodb_table",
        {
            "name": "task_store-local",
            "hash_key": "task_id",
            "billing_mode": "PAY_PER_REQUEST",
            "point_in_time_recovery": {"enabled": True},
            "ttl": {"attribute_name": "ttl", "enabled": True},
            "global_secondary_index": [
                {
                    "name": "status-created_at-index",
                    "hash_key": "status",
                    "range_key": "created_at",
                    "projection_type": "ALL",
                }
            ],
        },
    ),
    ("gpu-orchestrator-iam", "aws_iam_role", {"name": "orchestrator-task-role-local"}),
    ("gpu-orchestrator-iam", "aws_iam_role", {"name": "gpu-instance-role-local"}),
    ("gpu-orchestrator-iam", "aws_iam_role", {"name": "lambda-gpu-shutdown-role-local"}),
    ("gpu-orchestrator-iam", "aws_iam_instance_profile", {"name": "gpu-instance-profile-local"}),
    (
        "gpu-orchestrator-lambda",
        "aws_lambda_function",
        {"function_name": "shutdown-gpu-lambda-local", "runtime": "python3.11", "memory_size": 128, "timeout": 60},
    ),
    (
        "gpu-orchestrator-alarm",
        "aws_cloudwatch_metric_alarm",
        {"alarm_name": "QueueEmptyFor30Min-local", "threshold": 0, "evaluation_periods": 6},
    ),
    (
        "gpu-orchestrator-alarm",
        "aws_lambda_permission",
        {"principal": "lambda.alarms.cloudwatch.amazonaws.com", "action": "lambda:InvokeFunction"},
    ),
    (
        "gpu-orchestrator-artifacts",
        "aws_s3_bucket_public_access_block",
        {
            "block_public_acls": True,
            "block_public_policy": True,
            "ignore_public_acls": True,
            "restrict_public_buckets": True,
        },
    ),
]


@pytest.fixture(scope="module")
def synthesized_by_testing() -> dict[str, str]:
    app = Testing.app()
    main.compose(app, load_config("local", env={}))
    return {stack.node.id: Testing.synth(stack) for stack in app.node.children}


@pytest.mark.parametrize(("stack", "rtype", "properties"), SEED_SETTINGS)
def test_seed_setting(synthesized_by_testing: dict[str, str], stack: str, rtype: str, properties: Any) -> None:
    assert Testing.to_have_resource_with_properties(synthesized_by_testing[stack], rtype, properties)


def test_matchers_can_fail(synthesized_by_testing: dict[str, str]) -> None:
    doc = synthesized_by_testing["gpu-orchestrator-sqs"]
    assert not Testing.to_have_resource_with_properties(doc, "aws_sqs_queue", {"visibility_timeout_seconds": 301})
    assert json.loads(doc)["resource"]["aws_sqs_queue"]
