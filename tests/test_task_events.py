"""Task state-change events: the task table's stream -> functions/events -> EventBridge (and the webhook queue),
against the moto server on 127.0.0.1, with Lambda's stream poller modelled by localaws/streams.py.

The resources the stacks will create are made here with boto3 (`World`): the table with its stream, the bus, a
rule on it with an SQS target that observes what was published (moto delivers PutEvents to SQS targets), the
webhook queue, the signing secret, the functions and their mappings. tests/test_webhooks.py builds on `World`.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from core import contract as c
from core.contract import SettingError
from core.events import (
    DETAIL_TYPE,
    EVENT_ERROR_MAX_CHARS,
    EVENT_SOURCE,
    BadStreamRecord,
    WebhookMessage,
    event_id,
    from_stream_record,
)
from core.store import TaskStore
from core.tasks import TaskRecord, TaskStatus
from functions.events import handler as events_fn
from functions.events.publish import PUT_ATTEMPTS, publish
from functions.events.settings import EventsSettings
from localaws.streams import EVENTS_HANDLER, WEBHOOKS_HANDLER, LocalStreams, PutEventsFaults

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ROOT = Path(__file__).resolve().parent.parent
STALE_MS = 60_000


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("placeholder.py", "")  # moto stores the code; the pollers run this repository's
    return buf.getvalue()


@dataclass
class World:
    """The event and webhook resources of one environment in the moto server."""

    endpoint: str
    table_name: str
    bus: str
    observer_url: str
    webhook_queue_url: str
    secret_arn: str

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **_keys())

    @property
    def store(self) -> TaskStore:
        resource = boto3.resource("dynamodb", endpoint_url=self.endpoint, region_name=REGION, **_keys())
        return TaskStore(resource.Table(self.table_name))

    def streams(self, **kwargs: Any) -> LocalStreams:
        return LocalStreams(self.endpoint, region=REGION, credentials=CREDS, **kwargs)

    def observed(self) -> list[dict[str, Any]]:
        """Every event the observer queue got since the last call, oldest first (EventBridge's envelope)."""
        sqs, out = self.client("sqs"), []
        while messages := sqs.receive_message(QueueUrl=self.observer_url, MaxNumberOfMessages=10).get("Messages"):
            for m in messages:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.observer_url, ReceiptHandle=m["ReceiptHandle"])
        return out

    def webhook_messages(self) -> list[str]:
        sqs, out = self.client("sqs"), []
        while messages := sqs.receive_message(QueueUrl=self.webhook_queue_url, MaxNumberOfMessages=10).get("Messages"):
            out += [m["Body"] for m in messages]
            for m in messages:
                sqs.delete_message(QueueUrl=self.webhook_queue_url, ReceiptHandle=m["ReceiptHandle"])
        return out

    def settings(self) -> EventsSettings:
        return EventsSettings(self.bus, self.webhook_queue_url, "INFO")


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": CREDS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": CREDS["AWS_SECRET_ACCESS_KEY"]}


def _function(lam: Any, name: str, handler: str, role: str, env: dict[str, str], source: str, **mapping: Any) -> None:
    """A function (any small zip: the pollers run this repository's code) and its mapping, detached from moto's own
    delivery as the local AWS's mapping creator must do (moto's would empty the stream on the first write)."""
    lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler=handler,
        Code={"ZipFile": _zip()},
        Timeout=60,
        Environment={"Variables": env},
    )
    # The session's moto server runs localaws.streams.install(): moto itself never delivers the mapping.
    lam.create_event_source_mapping(
        EventSourceArn=source, FunctionName=name, FunctionResponseTypes=["ReportBatchItemFailures"], **mapping
    )


def build_world(endpoint: str, *, webhooks: bool = False) -> World:
    """A fresh moto (reset) holding the resources; the webhook function and its mapping only with `webhooks`."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
    name = f"tasks-{uuid.uuid4().hex[:8]}"
    client = lambda s: boto3.client(s, endpoint_url=endpoint, region_name=REGION, **_keys())  # noqa: E731
    ddb, sqs, events, lam = client("dynamodb"), client("sqs"), client("events"), client("lambda")
    table = ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]
    observer = sqs.create_queue(QueueName=f"{name}-observer")["QueueUrl"]
    observer_arn = sqs.get_queue_attributes(QueueUrl=observer, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    hooks = sqs.create_queue(QueueName=f"{name}-webhooks", Attributes={"VisibilityTimeout": "360"})["QueueUrl"]
    hooks_arn = sqs.get_queue_attributes(QueueUrl=hooks, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = events.create_event_bus(Name=f"{name}-bus")["EventBusArn"].split("/")[-1]
    pattern = {"source": [EVENT_SOURCE], "detail-type": [DETAIL_TYPE]}
    events.put_rule(Name="observe", EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule="observe", EventBusName=bus, Targets=[{"Id": "observer", "Arn": observer_arn}])
    secret = client("secretsmanager").create_secret(Name=f"{name}-webhook-key", SecretString="signing-key-1")["ARN"]
    role = client("iam").create_role(RoleName=f"{name}-fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env = {c.TASK_EVENT_BUS.name: bus, c.WEBHOOK_QUEUE_URL.name: hooks, c.LOG_LEVEL.name: "INFO"}
    stream = table["LatestStreamArn"]
    _function(lam, f"{name}-events", EVENTS_HANDLER, role, env, stream, StartingPosition="TRIM_HORIZON", BatchSize=100)
    if webhooks:
        env = {c.WEBHOOK_QUEUE_URL.name: hooks, c.WEBHOOK_SECRET_ARN.name: secret, c.TASK_TABLE_NAME.name: name}
        _function(lam, f"{name}-webhooks", WEBHOOKS_HANDLER, role, env, hooks_arn, BatchSize=10)
    return World(endpoint, name, bus, observer, hooks, secret)


@pytest.fixture
def world(moto_endpoint: str) -> World:
    return build_world(moto_endpoint)


def _expected(record: TaskRecord) -> str:
    return event_id(record.task_id, record.status, record.attempts, record.updated_at)


def _lifecycle(store: TaskStore) -> dict[str, list[TaskRecord]]:
    """Three tasks through the store; each task's records as they were right after each status change."""
    one = store.create(task_type="echo", params={"n": 1}, idempotency_key=f"k-{uuid.uuid4().hex}", submitted_by="ci")
    first = store.claim(one.task_id, worker="w1", stale_after_ms=STALE_MS).held
    store.heartbeat(first)  # no event: the status stays RUNNING
    back = store.requeue(first, error="instance stopping")
    second = store.claim(one.task_id, worker="w2", stale_after_ms=STALE_MS).held
    store.heartbeat(second)
    store.mark_completed(second, "s3://bucket/results/one")  # no event either
    done = store.finish(second, TaskStatus.SUCCEEDED, result_uri="s3://bucket/results/one")
    two = store.create(task_type="echo", params={}, notify_url="https://hooks.example/cb?token=SECRET-TOKEN")
    running = store.claim(two.task_id, worker="w1", stale_after_ms=STALE_MS).held
    failed = store.finish(running, TaskStatus.FAILED, error="boom " * 1000)
    three = store.create(task_type="echo", params={})
    cancelled = store.cancel(three.task_id)
    store.table.delete_item(Key={"task_id": three.task_id})  # as TTL expiry removes it: no event
    return {
        one.task_id: [one, first, back, second, done],
        two.task_id: [two, running, failed],
        three.task_id: [three, cancelled],
    }


def test_a_task_lifecycle_publishes_exactly_its_state_changes(world: World) -> None:
    history = _lifecycle(world.store)
    streams = world.streams()
    assert streams.drain() > 0
    got = world.observed()
    expected = [(tid, r) for tid, records in history.items() for r in records]
    assert [(e["detail"]["task_id"], e["detail"]["status"]) for e in got] == [(t, r.status) for t, r in expected]
    assert [e["detail"]["id"] for e in got] == [_expected(r) for _, r in expected]
    assert {e["source"] for e in got} == {EVENT_SOURCE} and {e["detail-type"] for e in got} == {DETAIL_TYPE}
    previous = [e["detail"]["previous_status"] for e in got]
    assert previous == [None, "QUEUED", "RUNNING", "QUEUED", "RUNNING", None, "QUEUED", "RUNNING", None, "QUEUED"]
    assert [e["detail"]["attempts"] for e in got] == [0, 1, 1, 2, 2, 0, 1, 1, 0, 0]

    succeeded, failed, cancelled = got[4]["detail"], got[7]["detail"], got[9]["detail"]
    done = history[succeeded["task_id"]][-1]
    assert succeeded["result_uri"] == "s3://bucket/results/one" and succeeded["submitted_by"] == "ci"
    assert succeeded["queued_seconds"] == (done.started_at - done.created_at) / 1000  # type: ignore[operator]
    assert succeeded["running_seconds"] == (done.finished_at - done.started_at) / 1000  # type: ignore[operator]
    assert got[0]["detail"]["queued_seconds"] is None and got[1]["detail"]["running_seconds"] is None
    assert len(failed["error"]) == EVENT_ERROR_MAX_CHARS and failed["notify"] is True
    assert cancelled["running_seconds"] is None and cancelled["queued_seconds"] is not None
    assert not any("SECRET-TOKEN" in json.dumps(e) or "hooks.example" in json.dumps(e) for e in got)

    # What was read and skipped: the idempotency marker, heartbeats and the completion marker, the REMOVE.
    seen = [r for run in streams.runs for r in run.event["Records"]]
    assert any(r["dynamodb"]["Keys"]["task_id"]["S"].startswith("idem#") for r in seen)
    assert sum(r["eventName"] == "MODIFY" and from_stream_record(r) is None for r in seen) == 3
    assert any(r["eventName"] == "REMOVE" for r in seen)
    assert all(run.response == {"batchItemFailures": []} for run in streams.runs)

    # The one task that named a webhook and ended: one delivery message, attempt 1.
    assert world.webhook_messages() == [
        WebhookMessage(failed["id"], failed["task_id"], TaskStatus.FAILED, TaskStatus.RUNNING, 1).encode()
    ]

    # The same records again (a poller re-reading the stream from its start): the same events, the same ids.
    assert world.streams().drain() > 0
    assert [e["detail"]["id"] for e in world.observed()] == [e["detail"]["id"] for e in got]
    assert streams.drain() == 0 and world.observed() == []


def test_refused_entries_are_retried_alone_and_a_lasting_refusal_checkpoints_at_its_record(world: World) -> None:
    store = world.store
    tasks = [store.create(task_type="echo", params={"i": i}) for i in range(3)]
    faults = PutEventsFaults(world.client("events"))
    marked = lambda tid: lambda entry: json.loads(entry["Detail"])["task_id"] == tid  # noqa: E731
    faults.refuse(marked(tasks[0].task_id), code="ThrottlingException", times=1)
    faults.refuse(marked(tasks[1].task_id), times=PUT_ATTEMPTS)
    streams = world.streams(faults=faults, sleep=lambda _: None)

    assert streams.pump() == 3
    sizes = [len(r) for r in faults.requests]
    assert sizes == [3, 2, 1]  # the refused ones only, again; the lasting one until the attempts ran out
    sequence = streams.runs[0].event["Records"][1]["dynamodb"]["SequenceNumber"]
    assert streams.runs[0].response == {"batchItemFailures": [{"itemIdentifier": sequence}]}
    first = [e["detail"]["task_id"] for e in world.observed()]
    assert sorted(first) == sorted([tasks[0].task_id, tasks[2].task_id])

    streams.drain()  # from the refused record on: the earlier one is not published again
    again = [e["detail"] for e in world.observed()]
    assert [d["task_id"] for d in again] == [tasks[1].task_id, tasks[2].task_id]
    assert again[1]["id"] == event_id(tasks[2].task_id, TaskStatus.QUEUED, 0, tasks[2].updated_at)


def test_a_refusal_not_worth_retrying_is_not_sent_again(world: World) -> None:
    task = world.store.create(task_type="echo", params={})
    faults = PutEventsFaults(world.client("events"))
    faults.refuse(lambda _: True, code="AccessDeniedException", times=1)
    streams = world.streams(faults=faults, sleep=lambda _: None)
    streams.pump()
    assert [len(r) for r in faults.requests] == [1]
    assert streams.runs[0].response["batchItemFailures"][0]["itemIdentifier"]
    streams.drain()
    assert [e["detail"]["task_id"] for e in world.observed()] == [task.task_id]


def test_more_than_ten_events_go_in_chunks_of_ten(world: World) -> None:
    tasks = [world.store.create(task_type="echo", params={"i": i}) for i in range(12)]
    faults = PutEventsFaults(world.client("events"))
    world.streams(faults=faults).drain()
    assert [len(r) for r in faults.requests] == [10, 2]
    assert [e["detail"]["task_id"] for e in world.observed()] == [t.task_id for t in tasks]


def _records(world: World) -> list[dict[str, Any]]:
    streams = world.client("dynamodbstreams")
    arn = world.client("dynamodb").describe_table(TableName=world.table_name)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    return list(streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"])


def test_an_unsendable_webhook_message_checkpoints_at_its_record(world: World) -> None:
    store = world.store
    plain = store.create(task_type="echo", params={})
    hooked = store.create(task_type="echo", params={}, notify_url="https://hooks.example/x")
    store.finish(store.claim(hooked.task_id, worker="w", stale_after_ms=STALE_MS).held, TaskStatus.SUCCEEDED)
    records = _records(world)
    missing = EventsSettings(world.bus, world.webhook_queue_url + "-missing", "INFO")
    out = publish(records, events_client=world.client("events"), sqs_client=world.client("sqs"), settings=missing)
    assert out.failed_at == records[3]["dynamodb"]["SequenceNumber"] and out.webhooks == 0
    assert out.error is not None and "SendMessageBatch" in out.error
    assert [e["detail"]["task_id"] for e in world.observed()] == [
        plain.task_id,
        hooked.task_id,
        hooked.task_id,
        hooked.task_id,
    ]


def test_an_unreadable_record_stops_the_batch_there_and_loses_nothing(world: World) -> None:
    world.store.create(task_type="echo", params={})
    world.store.create(task_type="echo", params={})
    records = _records(world)
    broken = json.loads(json.dumps(records[1], default=str))
    del broken["dynamodb"]["NewImage"]
    with pytest.raises(BadStreamRecord, match="NEW_AND_OLD_IMAGES"):
        from_stream_record(broken)
    out = publish(
        [records[0], broken],
        events_client=world.client("events"),
        sqs_client=world.client("sqs"),
        settings=world.settings(),
    )
    assert out.response() == {"batchItemFailures": [{"itemIdentifier": broken["dynamodb"]["SequenceNumber"]}]}
    assert out.published == 1 and out.error is not None and "\n" not in out.error


def test_the_lambda_handler_publishes_a_batch(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    task = world.store.create(task_type="echo", params={})
    for name, value in {
        c.AWS_ENDPOINT_URL.name: world.endpoint,
        c.AWS_DEFAULT_REGION.name: REGION,
        c.TASK_EVENT_BUS.name: world.bus,
        c.WEBHOOK_QUEUE_URL.name: world.webhook_queue_url,
        **CREDS,
    }.items():
        monkeypatch.setenv(name, value)
    events_fn._client.cache_clear()
    try:
        assert events_fn.handler({"Records": _records(world)}, None) == {"batchItemFailures": []}
    finally:
        events_fn._client.cache_clear()
    assert [e["detail"]["task_id"] for e in world.observed()] == [task.task_id]
    with pytest.raises(ValueError, match="not a DynamoDB stream batch"):
        events_fn.handler({"nope": 1}, None)


def test_settings_name_what_is_missing() -> None:
    with pytest.raises(SettingError) as err:
        EventsSettings.from_env({c.WEBHOOK_QUEUE_URL.name: "q"})
    assert str(err.value).startswith("TASK_EVENT_BUS: not set") and "\n" not in str(err.value)


@pytest.fixture
def zipped(tmp_path: Path) -> Iterator[Path]:
    """The two functions as their zips lay them out: the package at the top level, beside `core`."""
    for package in ("events", "webhooks"):
        shutil.copytree(ROOT / "functions" / package, tmp_path / package)
    shutil.copytree(ROOT / "core", tmp_path / "core")
    yield tmp_path


def test_the_packages_import_as_their_zips_lay_them_out(zipped: Path) -> None:
    code = "import events.handler, webhooks.handler; print(events.handler.handler, webhooks.handler.handler)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(zipped)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=zipped,
    )
    assert out.returncode == 0, out.stderr
