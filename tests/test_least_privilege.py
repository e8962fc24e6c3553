"""Least privilege, enforced by the server: each component runs with exactly its synthesized role's policies.

A moto server that checks IAM (localaws.authserver, its own process; resource-level checks from localaws.enforce)
holds the synthesized `local` environment, built by an admin user. For each role the harness created, a user carries
exactly that role's policies, read back from IAM. The orchestrator, the adapter and the shutdown Lambda then do
their whole job with those keys, and each is refused, by the server, what it must not do. A policy that is too
narrow fails a job test; one that is too wide fails a refusal.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import tests._least_privilege_support as support
from localaws.metadata import MetadataServer
from modules.layout import LAMBDA
from tests._least_privilege_support import (
    REGION,
    World,
    adapter_worker,
    install_adapter,
    invoke_lambda,
    orchestrator,
    refused,
    submit,
    warnings,
)

world, fresh = support.world, support.fresh  # fixtures: one enforcing server per module, state reset per test


# -- the orchestrator --------------------------------------------------------------------------------------------
def test_orchestrator_does_its_whole_job_with_its_own_role(fresh: World, caplog: pytest.LogCaptureFixture) -> None:
    gpu = fresh.aws.instance_ids[0]
    with orchestrator(fresh) as api:
        health = api.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["queue"] == {"visible": 0, "in_flight": 0} and health.json()["gpu"] == {gpu: "stopped"}

        plain = api.post("/tasks", json={"type": "noop", "params": {}})  # PutItem, SendMessage, UpdateItem, Invoke
        assert plain.status_code == 202, plain.text
        assert plain.json()["gpu"]["controller"] == "notified", plain.json()
        assert api.controller.drain()  # the controller, with the Lambda's key, starts the GPU
        assert fresh.state(gpu) == "running"
        body = {"type": "sleep", "params": {"seconds": 1, "exit_code": 0}, "idempotency_key": f"k-{uuid.uuid4()}"}
        keyed = api.post("/tasks", json=body)  # TransactWriteItems: PutItem x2 on the table
        again = api.post("/tasks", json=body)  # the transaction is cancelled; GetItem finds the first task
        assert keyed.status_code == again.status_code == 202, (keyed.text, again.text)
        assert again.json()["task_id"] == keyed.json()["task_id"] and again.headers["Idempotent-Replayed"] == "true"

        assert api.get(f"/tasks/{plain.json()['task_id']}").json()["status"] == "QUEUED"
        listed = api.get("/tasks", params={"status": "QUEUED"})  # Query on the status index
        assert listed.status_code == 200, listed.text
        assert {t["task_id"] for t in listed.json()["items"]} == {plain.json()["task_id"], keyed.json()["task_id"]}
        cancelled = api.post(f"/tasks/{plain.json()['task_id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED", cancelled.text

        health = api.get("/healthz").json()
        assert health["ok"] and health["queue"]["visible"] == 2 and health["dlq"] == {"visible": 0, "in_flight": 0}
    assert fresh.depth(fresh.aws.queue_url) == (2, 0)
    assert "enqueued_at" in fresh.item(keyed.json()["task_id"])  # mark_enqueued's UpdateItem: a refusal is only logged
    assert warnings(caplog, "orchestrator") == []


def test_orchestrator_reads_and_lists_results_and_writes_inputs_with_its_own_role(fresh: World) -> None:
    """What presigning needs is what the role has: the signer's own rights are what a presigned URL carries."""
    s3 = fresh.client("orchestrator", "s3")
    key = _result_key(fresh)
    task_prefix = key.rsplit("/", 1)[0] + "/"
    assert s3.get_object(Bucket=fresh.aws.bucket, Key=key)["Body"].read() == b"{}"
    listed = s3.list_objects_v2(Bucket=fresh.aws.bucket, Prefix=task_prefix)
    assert [o["Key"] for o in listed["Contents"]] == [key]
    s3.put_object(Bucket=fresh.aws.bucket, Key="inputs/local/lp/in.txt", Body=b"x")


# -- the adapter -------------------------------------------------------------------------------------------------
def test_adapter_installs_and_runs_tasks_end_to_end_with_its_own_role(
    fresh: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapter")
    aws = fresh.aws
    env = install_adapter(fresh, tmp_path)  # ssm:GetParameter x2, s3:GetObject under adapter/
    aws.client("s3").put_object(Bucket=aws.bucket, Key="inputs/lp/data.txt", Body=b"one\ntwo\n")
    digest = submit(fresh, "digest", {"input": "inputs/lp/data.txt"})  # GetObject under inputs/
    slow = submit(fresh, "sleep", {"seconds": 0.8, "exit_code": 0})  # long enough for a few heartbeats
    # The installed config names the hosts table, so the adapter records its liveness: it asks its instance's
    # metadata service for its id (a local one, on 127.0.0.1), then UpdateItem on the hosts table with its role.
    instance = aws.instance_ids[0]
    with MetadataServer(instance) as imds:
        worker = adapter_worker(fresh, {**env, "INSTANCE_METADATA_URL": imds.url}, tmp_path / "work")
        assert worker.turn() is None and worker.turn() is None  # receive, claim, heartbeat, upload, finish, delete
    worker.rollout.changed()  # the rollout check: both parameters again (the answer depends on test overrides)
    seen = aws.client("dynamodb").get_item(
        TableName=aws.hosts_table_name, Key={"instance_id": {"S": instance}, "sk": {"S": "live"}}
    )
    assert seen["Item"]["worker"] == {"S": "gpu-1"}

    for task_id in (digest, slow):
        item = fresh.item(task_id)
        assert item["status"] == "SUCCEEDED", item
        assert item["result_uri"] == f"s3://{aws.bucket}/results/{task_id}/"
        keys = {
            o["Key"]
            for o in aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix=f"results/{task_id}/")["Contents"]
        }
        assert f"results/{task_id}/result.json" in keys, keys
    slow_item = fresh.item(slow)
    assert slow_item["heartbeat_at"] > slow_item["started_at"]  # the heartbeat's UpdateItem went through
    assert fresh.depth(aws.queue_url) == (0, 0)  # both messages deleted
    assert warnings(caplog, "adapter") == []  # no swallowed refusal (heartbeat, visibility, rollout)
    assert [r.getMessage() for r in caplog.records].count("succeeded") == 2


def test_adapter_autostop_checks_run_with_its_own_role(fresh: World) -> None:
    from adapter.autostop import AutoStop, AutoStopOutcome

    ticks = iter(range(0, 10_000, 100))
    powered_off: list[bool] = []
    stop = AutoStop.from_env(
        {**fresh.aws.env(), "IDLE_WINDOW_SECONDS": "1"},
        sqs=fresh.client("adapter", "sqs"),
        dynamodb=fresh.client("adapter", "dynamodb"),
        poweroff=lambda: powered_off.append(True),
        clock=lambda: float(next(ticks)),
    )
    result = stop.maybe_stop()  # GetQueueAttributes + Query on the status index, then the OS poweroff
    assert result.outcome == AutoStopOutcome.POWERED_OFF, result
    assert powered_off == [True]


def test_adapter_dlq_path_with_its_own_role(fresh: World, tmp_path: Path) -> None:
    from adapter.queue import sweep_dlq
    from core.store import TaskStore

    aws = fresh.aws
    aws.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody="not json")
    worker = adapter_worker(fresh, {k: v for k, v in aws.env().items() if "AWS_" not in k}, tmp_path)
    worker.turn()  # poison: copied to the DLQ with its reason, deleted from the queue
    assert fresh.depth(aws.dlq_url)[0] == 1 and fresh.depth(aws.queue_url) == (0, 0)
    # A task whose last attempt died with its worker: SQS itself moved the message; the sweep fails the task.
    task = TaskStore(aws.resource("dynamodb").Table(aws.table_name)).create(task_type="noop", params={})
    aws.client("sqs").send_message(QueueUrl=aws.dlq_url, MessageBody=json.dumps({"task_id": task.task_id}))
    assert sweep_dlq(worker.store, fresh.client("adapter", "sqs"), aws.dlq_url, stale_after_ms=1000, hide_s=30) == 1
    assert worker.store.get(task.task_id).status == "FAILED"  # type: ignore[union-attr]


# -- the shutdown Lambda -----------------------------------------------------------------------------------------
def test_shutdown_lambda_stops_idle_and_starts_with_work_with_its_own_role(
    fresh: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    aws, gpu = fresh.aws, fresh.aws.instance_ids[0]
    aws.client("ec2").start_instances(InstanceIds=[gpu])
    out = invoke_lambda(fresh, monkeypatch, capsys)  # queue depth, index queries, DescribeInstances, then stop
    assert out["action"] == "STOP" and out["outcome"][0]["instance_id"] == gpu and "error" not in out["outcome"][0]
    assert fresh.state(gpu) == "stopped"

    from core.store import TaskStore

    task = TaskStore(aws.resource("dynamodb").Table(aws.table_name)).create(task_type="noop", params={})
    aws.client("sqs").send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"task_id": task.task_id}))
    out = invoke_lambda(fresh, monkeypatch, capsys)
    assert out["action"] == "START" and out["outcome"][0]["instance_id"] == gpu, out
    assert fresh.state(gpu) == "running"

    logs = fresh.client("lambda", "logs")  # what the runtime does with the role: write the function's own logs
    (group,) = [g["name"] for k, g in aws.of_type("aws_cloudwatch_log_group").items() if k.startswith(LAMBDA)]
    logs.create_log_stream(logGroupName=group, logStreamName="2026/01/01/[$LATEST]lp")
    logs.put_log_events(
        logGroupName=group,
        logStreamName="2026/01/01/[$LATEST]lp",
        logEvents=[{"timestamp": 1767225600000, "message": "hello"}],
    )


# -- refusals ----------------------------------------------------------------------------------------------------
def _receipt(world: World) -> str:
    sqs = world.aws.client("sqs")
    sqs.send_message(QueueUrl=world.aws.queue_url, MessageBody=json.dumps({"task_id": "x"}))
    return str(sqs.receive_message(QueueUrl=world.aws.queue_url, WaitTimeSeconds=1)["Messages"][0]["ReceiptHandle"])


def _result_key(world: World) -> str:
    key = f"results/{uuid.uuid4().hex}/result.json"
    world.aws.client("s3").put_object(Bucket=world.aws.bucket, Key=key, Body=b"{}")
    return key


def _item(task_id: str = "lp-probe") -> dict[str, Any]:
    return {"task_id": {"S": task_id}, "status": {"S": "QUEUED"}, "created_at": {"N": "1"}}


def _gpu(w: World) -> list[str]:
    return w.aws.instance_ids[:1]


# (who, what must be refused) -> the call, made with `who`'s own key on resources that exist, so that a policy
# granting it would make the call succeed and the test fail.
REFUSALS: dict[tuple[str, str], Callable[[World, Callable[[str], Any]], Any]] = {
    ("adapter", "start its instance"): lambda w, c: c("ec2").start_instances(InstanceIds=_gpu(w)),
    ("adapter", "stop its instance"): lambda w, c: c("ec2").stop_instances(InstanceIds=_gpu(w)),
    ("adapter", "describe instances"): lambda w, c: c("ec2").describe_instances(InstanceIds=_gpu(w)),
    # The adapter may send to the task queue (a stop hands its task back with a fresh message); a message alone runs
    # nothing, since the task item is the authority and the adapter cannot create or requeue items it does not hold
    # ("create a task" below). Any other queue stays out of reach.
    ("adapter", "send to another queue"): lambda w, c: c("sqs").send_message(
        QueueUrl=w.aws.queue_url.rsplit("/", 1)[0] + "/shutdown-gpu-lambda-dlq-local", MessageBody="{}"
    ),
    ("adapter", "overwrite an adapter bundle"): lambda w, c: c("s3").put_object(
        Bucket=w.aws.bucket, Key="adapter/adapter-0000000000000000.zip", Body=b"x"
    ),
    ("adapter", "write inputs"): lambda w, c: c("s3").put_object(Bucket=w.aws.bucket, Key="inputs/x", Body=b"x"),
    ("adapter", "create a task"): lambda w, c: c("dynamodb").put_item(TableName=w.aws.table_name, Item=_item()),
    ("orchestrator", "stop the GPU"): lambda w, c: c("ec2").stop_instances(InstanceIds=_gpu(w)),
    # Starting is the controller's alone: the API asks it (lambda:InvokeFunction on that one function).
    ("orchestrator", "start the GPU"): lambda w, c: c("ec2").start_instances(InstanceIds=_gpu(w)),
    ("orchestrator", "start another instance"): lambda w, c: c("ec2").start_instances(InstanceIds=[w.other_instance]),
    ("orchestrator", "delete a message"): lambda w, c: c("sqs").delete_message(
        QueueUrl=w.aws.queue_url, ReceiptHandle=_receipt(w)
    ),
    ("orchestrator", "receive a message"): lambda w, c: c("sqs").receive_message(QueueUrl=w.aws.queue_url),
    # It presigns uploads under inputs/ and downloads under results/, and lists results/: nothing else of the bucket.
    ("orchestrator", "read an input"): lambda w, c: c("s3").get_object(Bucket=w.aws.bucket, Key=_input_key(w)),
    ("orchestrator", "write a result"): lambda w, c: c("s3").put_object(
        Bucket=w.aws.bucket, Key="results/x/result.json", Body=b"{}"
    ),
    ("orchestrator", "list inputs"): lambda w, c: c("s3").list_objects_v2(Bucket=w.aws.bucket, Prefix="inputs/"),
    ("orchestrator", "list the bundles"): lambda w, c: c("s3").list_objects_v2(Bucket=w.aws.bucket, Prefix="adapter/"),
    ("orchestrator", "read a bundle"): lambda w, c: c("s3").get_object(Bucket=w.aws.bucket, Key=_bundle_key(w)),
    ("orchestrator", "delete a task"): lambda w, c: c("dynamodb").delete_item(
        TableName=w.aws.table_name, Key={"task_id": {"S": "lp-probe"}}
    ),
    ("orchestrator", "read the adapter config"): lambda w, c: c("ssm").get_parameter(Name=w.bundle_param),
    # The controller sends a message and updates a task item since it puts a stuck worker's tasks back in the queue
    # (functions/shutdown: a fresh message, then RUNNING -> QUEUED): what it still may not do is below.
    ("lambda", "delete a message"): lambda w, c: c("sqs").delete_message(
        QueueUrl=w.aws.queue_url, ReceiptHandle=_receipt(w)
    ),
    ("lambda", "put a task"): lambda w, c: c("dynamodb").put_item(TableName=w.aws.table_name, Item=_item()),
    ("lambda", "write a task in a transaction"): lambda w, c: c("dynamodb").transact_write_items(
        TransactItems=[{"Put": {"TableName": w.aws.table_name, "Item": _item()}}]
    ),
    ("lambda", "scan the task table"): lambda w, c: c("dynamodb").scan(TableName=w.aws.table_name, Limit=1),
    ("lambda", "list the bucket"): lambda w, c: c("s3").list_objects_v2(Bucket=w.aws.bucket),
    ("lambda", "read a bundle"): lambda w, c: c("s3").get_object(Bucket=w.aws.bucket, Key=_bundle_key(w)),
    ("lambda", "write an object"): lambda w, c: c("s3").put_object(Bucket=w.aws.bucket, Key="results/x", Body=b"x"),
    ("lambda", "stop another instance"): lambda w, c: c("ec2").stop_instances(InstanceIds=[w.other_instance]),
    ("lambda", "write another function's logs"): lambda w, c: c("logs").create_log_stream(
        logGroupName=_other_log_group(w), logStreamName="s"
    ),
}


def _input_key(world: World) -> str:
    key = "inputs/local/probe.txt"
    world.aws.client("s3").put_object(Bucket=world.aws.bucket, Key=key, Body=b"probe")
    return key


def _bundle_key(world: World) -> str:
    (obj,) = world.aws.of_type("aws_s3_object").values()
    return str(obj["key"])


def _other_log_group(world: World) -> str:
    name = f"/aws/lambda/other-{uuid.uuid4().hex[:8]}"
    world.aws.client("logs").create_log_group(logGroupName=name)
    return name


@pytest.mark.parametrize(("who", "what"), list(REFUSALS), ids=[f"{w} cannot {x}" for w, x in REFUSALS])
def test_refused(world: World, who: str, what: str) -> None:
    call = REFUSALS[(who, what)]
    refused(lambda: call(world, lambda service: world.client(who, service)))
    call(world, world.aws.client)  # the same call with the admin's key succeeds: only the policy stood in the way


def test_multi_resource_requests_are_refused_whole(fresh: World) -> None:
    """EC2 checks every instance of a Start/StopInstances; DynamoDB checks every entry of a transaction as its own
    action. One refused resource or entry refuses the request, and nothing of it happens."""
    gpu = fresh.aws.instance_ids[0]
    refused(lambda: fresh.client("lambda", "ec2").start_instances(InstanceIds=[gpu, fresh.other_instance]))
    assert fresh.state(gpu) == "stopped"
    table = fresh.aws.table_name
    refused(
        lambda: fresh.client("orchestrator", "dynamodb").transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": _item("lp-tx")}},
                {"Delete": {"TableName": table, "Key": {"task_id": {"S": "lp-other"}}}},
            ]
        )
    )
    assert "Item" not in fresh.aws.client("dynamodb").get_item(TableName=table, Key={"task_id": {"S": "lp-tx"}})


def test_unknown_keys_are_refused(world: World) -> None:
    sqs = boto3.client(
        "sqs",
        endpoint_url=world.aws.endpoint_url,
        region_name=REGION,
        aws_access_key_id="AKIAUNKNOWNKEY000000",
        aws_secret_access_key="nope",
    )
    with pytest.raises(ClientError) as info:
        sqs.get_queue_attributes(QueueUrl=world.aws.queue_url, AttributeNames=["All"])
    assert info.value.response["Error"]["Code"] == "InvalidClientTokenId"
