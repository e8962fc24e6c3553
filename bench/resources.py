"""Task queue, DLQ and table for the benchmarks, with the settings of the synthesized `local` stacks.

The settings are read from tests/golden/local.json (the committed synth, kept equal to a fresh one by the golden
test), not written out again here. Names get a caller-chosen prefix, so one moto server can hold several copies
(a benchmark series each, so their tables grow alike).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "local.json"


def _declared(rtype: str) -> list[dict[str, Any]]:
    stacks = json.loads(GOLDEN.read_text())
    return [body for doc in stacks.values() for body in doc.get("resource", {}).get(rtype, {}).values()]


def _table(prefix: str) -> dict[str, Any]:
    return next(t for t in _declared("aws_dynamodb_table") if t["name"].startswith(prefix))


def create_host_resources(session: Any, endpoint: str, name: str) -> dict[str, str]:
    """What an instance's adapter has beside the task resources: the GPU hosts table (its key schema as the stacks
    declare it) and a metrics log group; returns the runtime env names."""
    spec = _table("gpu_hosts-")
    table, group = f"{name}_gpu_hosts", f"/bench/{name}/metrics"
    keys = [{"AttributeName": spec["hash_key"], "KeyType": "HASH"}]
    keys.append({"AttributeName": spec["range_key"], "KeyType": "RANGE"})
    session.client("dynamodb", endpoint_url=endpoint).create_table(
        TableName=table,
        BillingMode=spec["billing_mode"],
        AttributeDefinitions=[{"AttributeName": a["name"], "AttributeType": a["type"]} for a in spec["attribute"]],
        KeySchema=keys,
    )
    session.client("logs", endpoint_url=endpoint).create_log_group(logGroupName=group)
    return {"HOSTS_TABLE_NAME": table, "METRICS_LOG_GROUP": group}


def create_task_resources(session: Any, endpoint: str, name: str) -> dict[str, str]:
    """Queue (+ redrive to its DLQ) and table (+ status index) like the stacks; returns the runtime env names."""
    queues = {q["name"]: q for q in _declared("aws_sqs_queue")}
    main = next(q for n, q in queues.items() if n.startswith("gpu_tasks_queue-"))
    table_spec = _table("task_store-")
    sqs = session.client("sqs", endpoint_url=endpoint)
    dlq = sqs.create_queue(QueueName=f"{name}_dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.loads(main["redrive_policy"])
    attrs = {
        "VisibilityTimeout": str(main["visibility_timeout_seconds"]),
        "ReceiveMessageWaitTimeSeconds": str(main["receive_wait_time_seconds"]),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": redrive["maxReceiveCount"]}),
    }
    queue = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    table = f"{name}_tasks"
    indexes = [
        {
            "IndexName": g["name"],
            "KeySchema": [
                {"AttributeName": g["hash_key"], "KeyType": "HASH"},
                {"AttributeName": g["range_key"], "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": g["projection_type"]},
        }
        for g in table_spec["global_secondary_index"]
    ]
    session.client("dynamodb", endpoint_url=endpoint).create_table(
        TableName=table,
        BillingMode=table_spec["billing_mode"],
        AttributeDefinitions=[
            {"AttributeName": a["name"], "AttributeType": a["type"]} for a in table_spec["attribute"]
        ],
        KeySchema=[{"AttributeName": table_spec["hash_key"], "KeyType": "HASH"}],
        GlobalSecondaryIndexes=indexes,
    )
    return {
        "TASK_QUEUE_URL": queue,
        "TASK_DLQ_URL": dlq,
        "TASK_TABLE_NAME": table,
        "TASK_STATUS_INDEX": indexes[0]["IndexName"],
    }
