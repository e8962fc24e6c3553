"""Submit when AWS fails part-way: the write-send-mark order, what a retry with the same key does, and a nudge of the
controller that fails. Failures are real ones from moto: a queue, table or function name that does not exist there."""

from __future__ import annotations

import json
from typing import Any

import httpx

from core.store import TaskStore
from localaws.lambdas import LocalController
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings


def make_app(aws: Any, controller: LocalController, **env: str) -> Any:
    settings = Settings.from_env({**aws.env(), **controller.env(), "ORCHESTRATOR_INSECURE": "1", **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    clients = Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table)
    return create_app(settings, clients)


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


def state(aws: Any) -> str:
    described = aws.client("ec2").describe_instances(InstanceIds=aws.instance_ids)
    return str(described["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_send_failure_without_key_marks_the_task_failed_and_store_failure_sends_nothing(
    local_aws: Any, controller: LocalController
) -> None:
    resp = post(make_app(local_aws, controller, TASK_TABLE_NAME="no-such-table"), {"type": "noop"})
    assert resp.status_code == 503 and resp.json()["error"] == "store_unavailable"
    assert queued(local_aws) == []

    resp = post(make_app(local_aws, controller, TASK_QUEUE_URL=local_aws.queue_url + "-missing"), {"type": "noop"})
    assert resp.status_code == 503 and "marked FAILED" in resp.json()["message"]
    [task] = tasks(local_aws)
    assert task["status"] == "FAILED" and "enqueue failed" in task["error"] and "enqueued_at" not in task
    assert queued(local_aws) == [] and controller.runs == []  # nothing queued: the controller was not told


def test_send_failure_with_key_is_repaired_by_repeating_the_request(
    local_aws: Any, controller: LocalController
) -> None:
    body = {"type": "noop", "idempotency_key": "retry-me"}
    failed = post(make_app(local_aws, controller, TASK_QUEUE_URL=local_aws.queue_url + "-missing"), body)
    assert failed.status_code == 503 and "same idempotency_key" in failed.json()["message"]
    [task] = tasks(local_aws)
    assert task["status"] == "QUEUED" and "enqueued_at" not in task
    assert controller.drain() and controller.runs == [] and state(local_aws) == "stopped"  # nothing queued: no start

    app = make_app(local_aws, controller)
    repaired = post(app, body)
    assert repaired.status_code == 202 and repaired.json()["task_id"] == task["task_id"]
    assert repaired.json()["gpu"] == {"controller": "notified"}  # the repeat queued it, so it tells the controller
    sent = queued(local_aws)
    [task] = tasks(local_aws)
    assert sent == [{"v": 1, "task_id": task["task_id"], "enqueue_id": task["enqueue_id"]}]  # its current message
    assert "enqueued_at" in task
    again = post(app, body)  # now marked: a further repeat sends nothing
    assert again.status_code == 202 and queued(local_aws) == [] and again.json()["gpu"] == {"controller": "skipped"}
    assert controller.drain() and [r.trigger for r in controller.runs] == ["api"]


def test_a_failed_nudge_is_reported_never_raised_and_the_schedule_starts_the_gpu(
    local_aws: Any, controller: LocalController
) -> None:
    app = make_app(local_aws, controller, CONTROLLER_FUNCTION_NAME="no-such-function")
    with serve_in_thread(app) as url:
        resp = httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10)
        health = httpx.get(f"{url}/healthz", timeout=10)
    assert resp.status_code == 202 and resp.json()["status"] == "QUEUED"
    nudge = resp.json()["gpu"]
    assert nudge["controller"] == "failed" and "ResourceNotFoundException" in nudge["error"]  # moto's own answer
    assert health.status_code == 200  # degraded, not down: the schedule still starts the GPU
    failure = health.json()["controller"]["last_failure"]
    assert failure["task_id"] == resp.json()["task_id"] and failure["controller"] == "failed"
    depth = local_aws.client("sqs").get_queue_attributes(
        QueueUrl=local_aws.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert depth["ApproximateNumberOfMessages"] == "1"  # queued all the same (read without receiving it)
    assert controller.drain() and controller.runs == [] and state(local_aws) == "stopped"
    controller.scheduled()  # the next scheduled run, at most a minute later
    assert controller.drain() and state(local_aws) == "running"
    [run] = controller.runs
    assert run.trigger == "aws.events" and run.record is not None and run.record["decision"]["action"] == "START"
