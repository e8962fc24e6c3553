"""Submit when AWS fails part-way: the write-send-mark order and what a retry with the same key does.
Failures are real ones from moto: a queue or table name that does not exist there."""

from __future__ import annotations

import json
from typing import Any

import httpx

from core.store import TaskStore
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings


def make_app(aws: Any, **env: str) -> Any:
    settings = Settings.from_env({**aws.env(), "ORCHESTRATOR_INSECURE": "1", **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    return create_app(settings, Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), table=table))


def post(app: Any, body: dict[str, Any]) -> httpx.Response:
    with serve_in_thread(app) as url:
        return httpx.post(f"{url}/tasks", json=body, timeout=10)


def queued(aws: Any) -> list[dict[str, Any]]:
    out = aws.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in out.get("Messages", [])]


def tasks(aws: Any) -> list[dict[str, Any]]:
    table = aws.resource("dynamodb").Table(aws.table_name)
    found = (TaskStore(table).get(i["task_id"]) for i in table.scan()["Items"] if "status" in i)
    return [record.to_item() for record in found if record is not None]


def test_send_failure_without_key_marks_the_task_failed_and_store_failure_sends_nothing(local_aws: Any) -> None:
    resp = post(make_app(local_aws, TASK_TABLE_NAME="no-such-table"), {"type": "noop"})
    assert resp.status_code == 503 and resp.json()["error"] == "store_unavailable"
    assert queued(local_aws) == []

    resp = post(make_app(local_aws, TASK_QUEUE_URL=local_aws.queue_url + "-missing"), {"type": "noop"})
    assert resp.status_code == 503 and "marked FAILED" in resp.json()["message"]
    [task] = tasks(local_aws)
    assert task["status"] == "FAILED" and "enqueue failed" in task["error"] and "enqueued_at" not in task
    assert queued(local_aws) == []


def test_send_failure_with_key_is_repaired_by_repeating_the_request(local_aws: Any) -> None:
    body = {"type": "noop", "idempotency_key": "retry-me"}
    failed = post(make_app(local_aws, TASK_QUEUE_URL=local_aws.queue_url + "-missing"), body)
    assert failed.status_code == 503 and "same idempotency_key" in failed.json()["message"]
    [task] = tasks(local_aws)
    assert task["status"] == "QUEUED" and "enqueued_at" not in task
    described = local_aws.client("ec2").describe_instances(InstanceIds=local_aws.instance_ids)
    assert described["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped"  # nothing queued: no start

    app = make_app(local_aws)
    repaired = post(app, body)
    assert repaired.status_code == 202 and repaired.json()["task_id"] == task["task_id"]
    sent = queued(local_aws)
    [task] = tasks(local_aws)
    assert sent == [{"v": 1, "task_id": task["task_id"], "enqueue_id": task["enqueue_id"]}]  # its current message
    assert "enqueued_at" in task
    again = post(app, body)  # now marked: a further repeat sends nothing
    assert again.status_code == 202 and queued(local_aws) == []
