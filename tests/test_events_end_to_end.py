"""The events layer as the stacks build it: a task submitted through the API with a notify_url, run through the
task table's transitions, is published on the environment's bus (state by state, each once) and its webhook is
delivered, signed with the key the webhook function made in the environment's secret, to an https receiver on
127.0.0.1; GET /tasks/{id} then shows the delivery. Everything runs on the local AWS built from the synthesized
`local` stacks (localaws.build), the functions through localaws/streams.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.events import DETAIL_TYPE, EVENT_SOURCE
from core.store import TaskStore
from core.tasks import TaskStatus
from core.webhook import SIGNATURE_HEADER, verify
from localaws.lambdas import LocalController
from localaws.streams import LocalStreams
from modules.layout import API, EVENTS
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings
from tests._webhook_support import Receiver, pki, receiver

__all__ = ["pki", "receiver"]  # fixtures
TOKEN = "events-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(local_aws: Any, controller: LocalController) -> Iterator[httpx.Client]:
    """The API with the settings its synthesized function has that point anywhere but AWS itself (the local
    environments' loopback rule and metrics namespace), in token mode."""
    function = local_aws.client("lambda").get_function_configuration(
        FunctionName=local_aws.outputs[API]["ApiFunctionName"]
    )
    rendered = function["Environment"]["Variables"]
    own = {k: rendered[k] for k in ("WEBHOOK_ALLOW_LOOPBACK", "METRICS_NAMESPACE", "HOSTS_TABLE_NAME")}
    settings = Settings.from_env({**local_aws.env(), **controller.env(), **own, "ORCHESTRATOR_TOKEN": TOKEN})
    clients = Clients(
        sqs=local_aws.client("sqs"),
        ec2=local_aws.client("ec2"),
        lambda_=controller.client,
        table=local_aws.resource("dynamodb").Table(local_aws.table_name),
        dynamodb=local_aws.client("dynamodb"),
    )
    with serve_in_thread(create_app(settings, clients)) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        yield client


def observer(aws: Any) -> str:
    """A queue that a rule on the environment's bus sends every task event to (what a consumer would set up)."""
    sqs, events = aws.client("sqs"), aws.client("events")
    url = sqs.create_queue(QueueName="event-observer")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = aws.outputs[EVENTS]["EventBusName"]
    pattern = {"source": [EVENT_SOURCE], "detail-type": [DETAIL_TYPE]}
    events.put_rule(Name="all-task-events", EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule="all-task-events", EventBusName=bus, Targets=[{"Id": "observer", "Arn": queue_arn}])
    return url


def drained(aws: Any, url: str) -> list[dict[str, Any]]:
    sqs, out = aws.client("sqs"), []
    while found := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in found:
            out.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return out


def test_a_task_with_a_webhook_is_published_and_delivered_signed(
    local_aws: Any, api: httpx.Client, receiver: Receiver, pki: dict[str, Path]
) -> None:
    watched = observer(local_aws)
    # The synthesized webhook function may target 127.0.0.1 in the local environments only (WEBHOOK_ALLOW_LOOPBACK,
    # rendered by the events stack); the test's certificate authority is trusted on top of the system's.
    streams = LocalStreams.of(local_aws, env={"WEBHOOK_CA_FILE": str(pki["ca"])})
    assert {m.function.split("-local")[0] for m in streams.mappings} == {"gpu-task-events", "gpu-task-webhooks"}

    hook = receiver.url(host="127.0.0.1")
    submitted = api.post("/tasks", json={"type": "noop", "notify_url": hook})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    assert submitted.json()["notify"]["state"] == "PENDING"

    store = TaskStore(local_aws.resource("dynamodb").Table(local_aws.table_name))
    held = store.claim(task_id, worker="e2e-worker", stale_after_ms=60_000).held
    store.heartbeat(held)  # no state change: no event
    store.finish(held, TaskStatus.SUCCEEDED, result_uri=f"s3://{local_aws.bucket}/results/{task_id}/")
    streams.drain()

    events = [e for e in drained(local_aws, watched) if e["detail"]["task_id"] == task_id]
    assert [e["detail"]["status"] for e in events] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert [e["detail"]["previous_status"] for e in events] == [None, "QUEUED", "RUNNING"]
    assert len({e["detail"]["id"] for e in events}) == 3 and all(e["source"] == EVENT_SOURCE for e in events)
    assert events[-1]["detail"]["notify"] is True and "token" not in json.dumps(events)  # the URL stays private

    (delivery,) = receiver.requests
    assert delivery["path"] == "/hook?token=abc"
    key = local_aws.client("secretsmanager").get_secret_value(SecretId=local_aws.outputs[EVENTS]["WebhookSecretArn"])
    assert verify(key["SecretString"].encode(), delivery["body"], delivery["headers"][SIGNATURE_HEADER])
    assert json.loads(delivery["body"])["status"] == "SUCCEEDED"

    shown = api.get(f"/tasks/{task_id}").json()
    assert shown["notify"]["state"] == "DELIVERED" and shown["notify"]["attempts"] == 1

    streams.drain()  # the delivery's own write to the item changed no state: nothing more is published or sent
    assert drained(local_aws, watched) == [] and len(receiver.requests) == 1
