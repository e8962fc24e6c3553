"""Every setting the seed lists, and what the infrastructure issue adds, checked on the synthesized JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdktf import Testing

from modules.layout import ALARM, API, ARTIFACTS, DEPENDENCIES, DYNAMODB, EVENTS, GPU, IAM, LAMBDA, SQS, STACK_ORDER
from tests.infra_helpers import load, one, resources


@pytest.fixture(scope="module")
def stacks(synthesized: Any) -> dict[str, dict[str, Any]]:
    return load(synthesized("local"))


def test_stack_names_are_the_seeds_plus_artifacts(stacks: dict[str, Any]) -> None:
    assert sorted(stacks) == sorted(STACK_ORDER)
    assert set(STACK_ORDER) == {
        "gpu-orchestrator-sqs",
        "gpu-orchestrator-dynamodb",
        "gpu-orchestrator-iam",
        "gpu-orchestrator-lambda",
        "gpu-orchestrator-alarm",
        "gpu-orchestrator-artifacts",
        "gpu-orchestrator-gpu",
        "gpu-orchestrator-api",
        "gpu-orchestrator-events",
    }


def test_dependencies_follow_the_seeds_diagram_through_remote_state(synthesized: Any) -> None:
    """Every remote-state read is declared, and every declared one happens: the adopt mode (local) reads the GPU
    instance ids from its config, the create mode (staging) from the gpu stack, so the two together read them all."""
    union: dict[str, set[str]] = {}
    for env in ("local", "staging"):
        for stack, doc in load(synthesized(env)).items():
            reads = {
                name.removeprefix("cross-stack-reference-input-")
                for name in doc.get("data", {}).get("terraform_remote_state", {})
            }
            assert reads <= DEPENDENCIES[stack], (env, stack)
            union.setdefault(stack, set()).update(reads)
    assert union == DEPENDENCIES
    # and the declared order applies every producer before its consumers
    for stack, producers in DEPENDENCIES.items():
        assert all(STACK_ORDER.index(p) < STACK_ORDER.index(stack) for p in producers)


def test_queue_and_dead_letter_queue(stacks: dict[str, Any]) -> None:
    doc = stacks[SQS]
    dlq = one(doc, "aws_sqs_queue", name="gpu_tasks_queue_dlq-local")
    queue = one(doc, "aws_sqs_queue", name="gpu_tasks_queue-local")
    assert queue["visibility_timeout_seconds"] == 300
    assert queue["receive_wait_time_seconds"] == 20
    assert queue["message_retention_seconds"] == 86400
    redrive = json.loads(queue["redrive_policy"])
    assert redrive["maxReceiveCount"] == 3
    dlq_address = next(
        a for a, b in doc["resource"]["aws_sqs_queue"].items() if b["name"].startswith("gpu_tasks_queue_dlq")
    )
    assert redrive["deadLetterTargetArn"] == f"${{aws_sqs_queue.{dlq_address}.arn}}"
    assert dlq["message_retention_seconds"] == 14 * 86400
    assert queue["sqs_managed_sse_enabled"] is True and dlq["sqs_managed_sse_enabled"] is True
    assert dlq["lifecycle"] == {"prevent_destroy": True}
    assert "lifecycle" not in queue
    allow = json.loads(one(doc, "aws_sqs_queue_redrive_allow_policy")["redrive_allow_policy"])
    assert allow["redrivePermission"] == "byQueue" and len(allow["sourceQueueArns"]) == 1
    assert Testing.to_have_resource_with_properties(
        json.dumps(doc), "aws_sqs_queue", {"name": "gpu_tasks_queue-local", "visibility_timeout_seconds": 300}
    )


def test_task_table(stacks: dict[str, Any]) -> None:
    table = one(stacks[DYNAMODB], "aws_dynamodb_table", name="task_store-local")
    assert table["stream_enabled"] is True and table["stream_view_type"] == "NEW_AND_OLD_IMAGES"  # task events
    assert table["hash_key"] == "task_id" and "range_key" not in table
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert table["point_in_time_recovery"] == {"enabled": True}
    assert table["ttl"] == {"attribute_name": "ttl", "enabled": True}
    assert {(a["name"], a["type"]) for a in table["attribute"]} == {
        ("task_id", "S"),
        ("status", "S"),
        ("created_at", "N"),
    }
    assert table["global_secondary_index"] == [
        {"name": "status-created_at-index", "hash_key": "status", "range_key": "created_at", "projection_type": "ALL"}
    ]
    assert table["lifecycle"] == {"prevent_destroy": True}
    assert table["deletion_protection_enabled"] is True


def bucket_parts(doc: dict[str, Any], name: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(address, resource type -> the one part of that type configuring the bucket named `name`)."""
    (address,) = [a for a, b in doc["resource"]["aws_s3_bucket"].items() if b["bucket"] == name]
    parts = {}
    for rtype in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_ownership_controls",
        "aws_s3_bucket_policy",
        "aws_s3_bucket_lifecycle_configuration",
    ):
        parts[rtype] = one(doc, rtype, bucket=f"${{aws_s3_bucket.{address}.id}}")
    return address, parts


def assert_private(parts: dict[str, dict[str, Any]], sse_algorithm: str) -> None:
    assert parts["aws_s3_bucket_versioning"]["versioning_configuration"] == {"status": "Enabled"}
    sse = parts["aws_s3_bucket_server_side_encryption_configuration"]["rule"][0]
    assert sse["apply_server_side_encryption_by_default"]["sse_algorithm"] == sse_algorithm
    block = parts["aws_s3_bucket_public_access_block"]
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    assert parts["aws_s3_bucket_ownership_controls"]["rule"] == {"object_ownership": "BucketOwnerEnforced"}
    policy = json.loads(parts["aws_s3_bucket_policy"]["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_artifacts_bucket(stacks: dict[str, Any]) -> None:
    doc = stacks[ARTIFACTS]
    address, parts = bucket_parts(doc, "gpu-orchestrator-artifacts-local-123456789012")
    assert_private(parts, "aws:kms")
    rules = {r["id"]: r for r in parts["aws_s3_bucket_lifecycle_configuration"]["rule"]}
    assert rules["expire-results"]["filter"] == [{"prefix": "results/"}]
    assert rules["expire-results"]["expiration"] == [{"days": 30}]
    assert len(json.loads(parts["aws_s3_bucket_policy"]["policy"])["Statement"]) == 1


def test_artifacts_access_logs_go_to_their_own_bucket_for_a_year(stacks: dict[str, Any]) -> None:
    doc = stacks[ARTIFACTS]
    source, _ = bucket_parts(doc, "gpu-orchestrator-artifacts-local-123456789012")
    target, parts = bucket_parts(doc, "gpu-orchestrator-artifacts-local-123456789012-logs")
    logging = one(doc, "aws_s3_bucket_logging")
    assert logging == {
        "bucket": f"${{aws_s3_bucket.{source}.id}}",
        "target_bucket": f"${{aws_s3_bucket.{target}.id}}",
        "target_prefix": "artifacts/",
    }
    assert_private(parts, "AES256")  # S3's log delivery cannot use the aws/s3 managed key
    rules = {r["id"]: r for r in parts["aws_s3_bucket_lifecycle_configuration"]["rule"]}
    assert rules["expire-everything"]["expiration"] == [{"days": 365}]
    assert rules["expire-everything"]["filter"] == [{"prefix": ""}]
    deny, delivery = json.loads(parts["aws_s3_bucket_policy"]["policy"])["Statement"]
    assert delivery == {
        "Sid": "S3ServerAccessLogDelivery",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": f"${{aws_s3_bucket.{target}.arn}}/artifacts/*",
        "Condition": {
            "ArnLike": {"aws:SourceArn": f"${{aws_s3_bucket.{source}.arn}}"},
            "StringEquals": {"aws:SourceAccount": "123456789012"},
        },
    }


def test_adapter_bundle_key_carries_its_hash_and_ssm_names_it(stacks: dict[str, Any]) -> None:
    doc = stacks[ARTIFACTS]
    obj = one(doc, "aws_s3_object")
    assert obj["key"] == f"adapter/adapter-{obj['source_hash'][:16]}.zip"
    assert obj["source"].startswith("assets/") and obj["source"].endswith("/adapter.zip")
    params = {p["name"]: p for p in resources(doc, "aws_ssm_parameter")}
    assert set(params) == {"/gpu-orchestrator/local/adapter/bundle", "/gpu-orchestrator/local/adapter/config"}
    assert "aws_s3_object" in params["/gpu-orchestrator/local/adapter/bundle"]["value"]
    config = json.loads(params["/gpu-orchestrator/local/adapter/config"]["value"])
    assert set(config) >= {"TASK_QUEUE_URL", "TASK_TABLE_NAME", "ARTIFACTS_BUCKET", "IDLE_WINDOW_SECONDS"}


def test_shutdown_function(stacks: dict[str, Any]) -> None:
    fn = one(stacks[LAMBDA], "aws_lambda_function")
    assert fn["function_name"] == "shutdown-gpu-lambda-local"
    assert fn["runtime"] == "python3.11" and fn["memory_size"] == 128 and fn["timeout"] == 60
    assert fn["handler"] == "shutdown.handler.handler"
    assert fn["filename"].endswith("/lambda-shutdown.zip")
    assert len(fn["source_code_hash"]) == 44  # base64 of a sha256
    env = fn["environment"]["variables"]
    assert env["GPU_INSTANCE_IDS"] == "i-0f0f6fd680921de5f"
    assert "AWS_REGION" not in env and not any(k.startswith("AWS_") for k in env)
    assert env["IDLE_WINDOW_SECONDS"] == "1800"
    assert one(stacks[LAMBDA], "aws_cloudwatch_log_group")["retention_in_days"] == 365
    rule = one(stacks[LAMBDA], "aws_cloudwatch_event_rule")
    assert rule["schedule_expression"] == "rate(1 minute)"
    perm = one(stacks[LAMBDA], "aws_lambda_permission")
    assert perm["principal"] == "events.amazonaws.com" and "aws_cloudwatch_event_rule" in perm["source_arn"]


def test_failed_async_invocations_go_to_the_functions_dead_letter_queue(stacks: dict[str, Any]) -> None:
    doc = stacks[LAMBDA]
    dlq = one(doc, "aws_sqs_queue")
    assert dlq == {
        "name": "shutdown-gpu-lambda-dlq-local",
        "message_retention_seconds": 14 * 86400,
        "sqs_managed_sse_enabled": True,
    }
    (address,) = doc["resource"]["aws_sqs_queue"]
    fn = one(doc, "aws_lambda_function")
    assert fn["dead_letter_config"] == {"target_arn": f"${{aws_sqs_queue.{address}.arn}}"}
    assert fn["reserved_concurrent_executions"] == 1


def test_local_aws_builds_the_dead_letter_queue_the_role_names_and_the_access_logging(local_aws: Any) -> None:
    """On created resources, not JSON: the ARN the role's grant computes is the ARN the queue really gets."""
    (fn,) = [f for k, f in local_aws.of_type("aws_lambda_function").items() if k.startswith(f"{LAMBDA}/")]
    queues = {q["name"]: q["arn"] for q in local_aws.of_type("aws_sqs_queue").values()}
    assert fn["dead_letter_target_arn"] == queues["shutdown-gpu-lambda-dlq-local"]
    policy = local_aws.client("iam").get_role_policy(
        RoleName="lambda-gpu-shutdown-role-local", PolicyName="least-privilege"
    )["PolicyDocument"]
    sends = [st["Resource"] for st in policy["Statement"] if "sqs:SendMessage" in st["Action"]]
    # the function's dead-letter queue, and the task queue (a stuck worker's tasks are requeued)
    assert sorted(sends) == sorted([[fn["dead_letter_target_arn"]], [queues["gpu_tasks_queue-local"]]])
    (logging,) = local_aws.of_type("aws_s3_bucket_logging").values()
    assert (logging["id"], logging["target_bucket"]) == (local_aws.bucket, f"{local_aws.bucket}-logs")


def test_idle_alarm_invokes_the_function_with_a_scoped_permission(stacks: dict[str, Any]) -> None:
    doc = stacks[ALARM]
    alarm = one(doc, "aws_cloudwatch_metric_alarm", alarm_name="QueueEmptyFor30Min-local")
    assert alarm["evaluation_periods"] == 6 and alarm["datapoints_to_alarm"] == 6
    assert alarm["threshold"] == 0 and alarm["comparison_operator"] == "LessThanOrEqualToThreshold"
    assert alarm["treat_missing_data"] == "breaching"
    metrics = {q["metric"]["metric_name"] for q in alarm["metric_query"] if "metric" in q}
    assert metrics == {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    }
    assert all(q["metric"]["period"] == 300 for q in alarm["metric_query"] if "metric" in q)
    (expression,) = [q for q in alarm["metric_query"] if "expression" in q]
    assert expression["return_data"] is True
    assert len(alarm["alarm_actions"]) == 1 and "aws_lambda_function" in alarm["alarm_actions"][0]
    (address,) = [
        a for a, b in doc["resource"]["aws_cloudwatch_metric_alarm"].items() if b["alarm_name"] == alarm["alarm_name"]
    ]
    perm = one(doc, "aws_lambda_permission")
    assert perm["principal"] == "lambda.alarms.cloudwatch.amazonaws.com"
    assert perm["source_arn"] == f"${{aws_cloudwatch_metric_alarm.{address}.arn}}"
    assert perm["action"] == "lambda:InvokeFunction"


def test_outputs_per_stack(stacks: dict[str, Any]) -> None:
    expected = {
        SQS: {"QueueUrl", "QueueArn", "DLQUrl"},
        DYNAMODB: {"TableName", "TableArn", "TableStreamArn", "HostsTableName"},
        ARTIFACTS: {"BucketName", "AdapterBundleUri", "CanvasPolicyArn"},
        IAM: {
            "OrchestratorRoleArn",
            "GpuInstanceRoleArn",
            "LambdaRoleArn",
            "InstanceProfileArn",
            "TaskEventsRoleArn",
            "TaskWebhooksRoleArn",
        },
        GPU: {"GpuInstanceIds", "AttachProfileCommands", "BootstrapDocumentName"},  # adopt mode (local)
        LAMBDA: {"FunctionArn", "FunctionName"},
        API: {"ApiUrl", "AdminApiUrl", "ApiFunctionName", "SubmitPolicyArn", "AdminPolicyArn"},
        EVENTS: {"EventBusName", "EventBusArn", "WebhookSecretArn", "WebhookQueueUrl", "WebhookDLQUrl"},
        ALARM: {"AlarmName", "AlarmArn", "AlarmTopicArn", "DashboardName"},
    }
    for stack, names in expected.items():
        declared = {n for n in stacks[stack].get("output", {}) if not n.startswith("cross-stack-output-")}
        assert declared == names, stack


def test_provider_default_tags_account_guard_and_local_state(stacks: dict[str, Any]) -> None:
    for stack, doc in stacks.items():
        (provider,) = doc["provider"]["aws"]
        assert provider["default_tags"] == [
            {"tags": {"project": "gpu-orchestrator", "environment": "local", "managed-by": "cdktf"}}
        ]
        assert provider["allowed_account_ids"] == ["123456789012"]
        assert provider["region"] == "us-east-1"
        backend = doc["terraform"]["backend"]
        assert backend == {"local": {"path": f"../../state/{stack}.tfstate"}}
        assert doc["terraform"]["required_providers"]["aws"]["version"] == "6.25.0"


def test_remote_environments_use_one_s3_key_per_stack_with_native_locking(synthesized: Any) -> None:
    for stack, doc in load(synthesized("prod")).items():
        backend = doc["terraform"]["backend"]["s3"]
        assert backend == {
            "bucket": "gpu-orchestrator-tfstate-prod-333333333333-us-east-1",
            "key": f"prod/{stack}.tfstate",
            "region": "us-east-1",
            "encrypt": True,
            "use_lockfile": True,
        }
        for remote in doc.get("data", {}).get("terraform_remote_state", {}).values():
            assert remote["backend"] == "s3"
            assert remote["config"]["key"].startswith("prod/") and remote["config"]["encrypt"] is True


def test_environments_do_not_clash_by_name(synthesized: Any) -> None:
    def names(env: str) -> set[str]:
        out = set()
        for doc in load(synthesized(env)).values():
            for rtype, items in doc.get("resource", {}).items():
                if rtype in ("aws_iam_role_policy", "aws_lambda_alias"):  # named within their role / function
                    continue
                for body in items.values():
                    for key in ("name", "bucket", "function_name", "alarm_name"):
                        if isinstance(body.get(key), str) and "${" not in body[key]:
                            out.add(body[key])
        return out

    dev, prod = names("dev"), names("prod")
    assert dev and prod and not dev & prod


def test_every_gpu_of_the_list_is_targeted(synthesized: Any) -> None:
    doc = load(synthesized("prod"))[LAMBDA]
    env = one(doc, "aws_lambda_function")["environment"]["variables"]
    assert env["GPU_INSTANCE_IDS"] == "i-0aaaaaaaaaaaaaaa1,i-0aaaaaaaaaaaaaaa2"


# --- fleet mode (local-fleet): the group, and every program and role pointed at it by name ---

FLEET_NAME, HOOK_NAME = "gpu-fleet-local-fleet", "gpu-fleet-local-fleet-handback"
GROUP_ARN = f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/{FLEET_NAME}"


@pytest.fixture(scope="module")
def fleet_stacks(synthesized: Any) -> dict[str, dict[str, Any]]:
    return load(synthesized("local-fleet"))


def test_fleet_gpu_stack_is_the_group_and_its_template_and_outputs_name_both(fleet_stacks: dict[str, Any]) -> None:
    doc = fleet_stacks[GPU]
    group = one(doc, "aws_autoscaling_group")
    assert (group["name"], group["min_size"], group["max_size"]) == (FLEET_NAME, 0, 4)
    assert group["initial_lifecycle_hook"][0]["name"] == HOOK_NAME
    assert group["warm_pool"]["pool_state"] == "Stopped"
    assert one(doc, "aws_launch_template")["instance_type"] == "g3.8xlarge"
    for rtype in ("aws_instance", "aws_ssm_document", "aws_ssm_association"):
        assert not resources(doc, rtype)
    outputs = {n: o for n, o in doc["output"].items() if not n.startswith("cross-stack-output-")}
    assert set(outputs) == {"FleetName", "HandbackHookName", "LaunchTemplateId", "SecurityGroupId"}
    (address,) = doc["resource"]["aws_autoscaling_group"]
    assert outputs["FleetName"]["value"] == f"${{aws_autoscaling_group.{address}.name}}"
    assert outputs["HandbackHookName"]["value"] == HOOK_NAME
    assert all(o["description"] for o in outputs.values())


def test_fleet_controller_is_told_the_group_and_its_slots_not_instances(fleet_stacks: dict[str, Any]) -> None:
    env = one(fleet_stacks[LAMBDA], "aws_lambda_function")["environment"]["variables"]
    assert (env["GPU_FLEET_NAME"], env["GPU_SLOTS"]) == (FLEET_NAME, "2")
    assert "GPU_INSTANCE_IDS" not in env and "TERMINATION_HOOK_NAME" not in env


def test_fleet_adapter_config_names_the_group_its_slots_and_the_handback_hook(fleet_stacks: dict[str, Any]) -> None:
    params = {p["name"]: p for p in resources(fleet_stacks[ARTIFACTS], "aws_ssm_parameter")}
    config = json.loads(params["/gpu-orchestrator/local-fleet/adapter/config"]["value"])
    assert (config["GPU_FLEET_NAME"], config["GPU_SLOTS"], config["TERMINATION_HOOK_NAME"]) == (
        FLEET_NAME,
        "2",
        HOOK_NAME,
    )
    assert "GPU_INSTANCE_IDS" not in config


def test_fleet_api_is_told_the_group(fleet_stacks: dict[str, Any]) -> None:
    (fn,) = [f for f in resources(fleet_stacks[API], "aws_lambda_function") if "api" in f["function_name"]]
    env = fn["environment"]["variables"]
    assert env["GPU_FLEET_NAME"] == FLEET_NAME and "GPU_INSTANCE_IDS" not in env and "GPU_SLOTS" not in env


def test_fleet_roles_reach_the_group_by_its_arn_and_never_start_or_stop_an_instance(
    fleet_stacks: dict[str, Any],
) -> None:
    from tests.infra_helpers import policy_statements

    iam = fleet_stacks[IAM]
    on_group: dict[str, set[str]] = {}
    for role in iam["resource"]["aws_iam_role"].values():
        for st in policy_statements(iam, role["name"]):
            if st["Action"] == ["ec2:RebootInstances"]:  # a stuck member, by the group's tag: never a start or stop
                assert st["Condition"] == {"StringEquals": {"aws:ResourceTag/aws:autoscaling:groupName": FLEET_NAME}}, (
                    st
                )
                continue
            assert not any(a.startswith("ec2:") and a != "ec2:DescribeInstances" for a in st["Action"]), st
            autoscaling = {a for a in st["Action"] if a.startswith("autoscaling:")}
            if autoscaling and st["Resource"] != ["*"]:
                assert st["Resource"] == [GROUP_ARN], st
                on_group.setdefault(role["name"], set()).update(autoscaling)
            elif autoscaling:
                assert all(a.split(":")[1].startswith("Describe") for a in autoscaling), st
    assert on_group == {
        "lambda-gpu-shutdown-role-local-fleet": {"autoscaling:SetDesiredCapacity", "autoscaling:SetInstanceHealth"},
        "gpu-instance-role-local-fleet": {
            "autoscaling:SetInstanceProtection",
            "autoscaling:CompleteLifecycleAction",
            "autoscaling:RecordLifecycleActionHeartbeat",
            "autoscaling:SetDesiredCapacity",
        },
    }
    # the name the roles are scoped to is the group's
    assert GROUP_ARN.endswith("/" + one(fleet_stacks[GPU], "aws_autoscaling_group")["name"])


def test_fleet_mode_reads_only_declared_stacks(fleet_stacks: dict[str, Any]) -> None:
    for stack, doc in fleet_stacks.items():
        reads = {
            name.removeprefix("cross-stack-reference-input-")
            for name in doc.get("data", {}).get("terraform_remote_state", {})
        }
        assert reads <= DEPENDENCIES[stack], stack
