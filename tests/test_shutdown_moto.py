"""`shutdown-gpu-lambda`'s handler against moto's server: real boto3 clients over HTTP, built by the handler from env.

Each test gets conftest's `local_aws`: a reset moto server holding what the synthesized `local` stacks declare,
and runs the handler with the environment the synthesized Lambda resource carries. The stopping race, which needs
a `stopping` state moto does not have, is in test_shutdown_stopping.py.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from core import contract
from core.idle import Policy
from core.observe import Sources, observe
from functions.shutdown.handler import ShutdownSettings, handler, run


@dataclass
class Stack:
    endpoint: str
    sqs: Any
    ddb: Any
    ec2: Any
    queue_url: str
    table: str
    instance_id: str
    env: dict[str, str] = field(default_factory=dict)  # what the tests run the handler with
    infra_env: dict[str, str] = field(default_factory=dict)  # the synthesized Lambda's own variables

    def put_task(self, status: str, *, age_s: float = 0.0, **extra: int) -> str:
        now_ms = int((time.time() - age_s) * 1000)
        task_id = f"t-{uuid.uuid4().hex}"
        item: dict[str, Any] = {
            "task_id": {"S": task_id},
            "status": {"S": status},
            "created_at": {"N": str(now_ms)},
            "updated_at": {"N": str(now_ms)},
        }
        item.update({k: {"N": str(v)} for k, v in extra.items()})
        self.ddb.put_item(TableName=self.table, Item=item)
        return task_id

    def state(self) -> str:
        out = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


# What the tests change in the Lambda's environment, on top of what the synthesized stack sets: windows shrunk so a
# test needs no waiting, and no in-invocation wait for `stopping` (test_shutdown_stopping.py turns it on).
TEST_OVERRIDES = {"IDLE_WINDOW_SECONDS": "0", "MIN_UPTIME_SECONDS": "0", "STOPPING_WAIT_SECONDS": "0"}


def stack_from(aws: Any) -> Stack:
    """The `local` environment as the stacks declare it (conftest's `local_aws`: queue, table + GSI, GPU instance), with
    the Lambda's own environment variables from the synthesized function. The harness launches the GPU stopped;
    these tests start from the common case of a running one."""
    ec2 = aws.client("ec2")
    instance_id = aws.instance_ids[0]
    ec2.start_instances(InstanceIds=[instance_id])
    env = {**aws.lambda_env, "AWS_ENDPOINT_URL": aws.endpoint_url, **TEST_OVERRIDES}
    return Stack(
        aws.endpoint_url,
        aws.client("sqs"),
        aws.client("dynamodb"),
        ec2,
        aws.queue_url,
        aws.table_name,
        instance_id,
        env,
        dict(aws.lambda_env),
    )


@pytest.fixture
def stack(local_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Stack:
    s = stack_from(local_aws)
    for key, value in s.env.items():
        monkeypatch.setenv(key, value)
    return s


def invoke(capsys: pytest.CaptureFixture[str], event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the handler; return its one JSON log line (and check there is exactly one, last, after the run's metric
    lines: one without a dimension, and one per stuck-worker step kind taken)."""
    capsys.readouterr()
    handler(event or {"source": "aws.events"}, None)
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    *metrics, record = docs
    assert record["event"] == "gpu_idle_decision" and "observation" in record
    assert metrics and all("_aws" in m for m in metrics), docs
    (plain,) = [m for m in metrics if "Step" not in m]
    assert plain["_aws"]["CloudWatchMetrics"][0]["Namespace"] == stack_env_namespace()
    assert plain["InstancesUp"] == sum(1 for i in record["observation"]["instances"] if i["state"] in UP)
    assert plain["TasksWaiting"] == record["observation"]["visible"] + record["observation"]["delayed"]
    moved = sum(1 for o in record["outcome"] if "to" in o)
    assert (plain["InstanceStarts"], plain["InstanceStops"]) == (
        (moved, 0) if record["decision"]["action"] == "START" else (0, moved)
    )
    return record


UP = ("pending", "running")


def stack_env_namespace() -> str:
    """The namespace the handler's environment names (the synthesized one, else the contract's default)."""
    return os.environ.get(contract.METRICS_NAMESPACE.name) or str(contract.METRICS_NAMESPACE.default)


def test_running_task_with_empty_visible_queue_is_never_stopped(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    msg = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=1)["Messages"][0]
    stack.put_task("RUNNING", heartbeat_at=int(time.time() * 1000))
    for trigger in ({"alarmData": {"state": {"value": "ALARM"}}}, {"source": "aws.events"}):
        record = invoke(capsys, trigger)
        assert record["observation"]["visible"] == 0 and record["observation"]["in_flight"] == 1
        assert record["decision"]["action"] == "NONE"
    assert record["trigger"] == "aws.events"
    # The worker deleted its message but has not written SUCCEEDED yet: the fresh heartbeat alone still protects it.
    stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=msg["ReceiptHandle"])
    record = invoke(capsys)
    assert record["decision"]["action"] == "NONE" and "heartbeat" in record["decision"]["reason"]
    assert stack.state() == "running"


def test_idle_instance_is_stopped_once(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.put_task("SUCCEEDED", age_s=7200, finished_at=int((time.time() - 3600) * 1000))
    for key in TEST_OVERRIDES:  # first with the stack's own settings (30-min window, 10-min min uptime)
        if key in stack.infra_env:
            monkeypatch.setenv(key, stack.infra_env[key])
        else:
            monkeypatch.delenv(key)
    record = invoke(capsys)  # the instance was launched seconds ago: it keeps its minimum uptime
    assert record["policy"]["idle_window_s"] == 1800 and record["decision"]["action"] == "NONE"
    assert "min uptime" in record["decision"]["reason"]
    monkeypatch.setenv("MIN_UPTIME_SECONDS", "0")
    monkeypatch.setenv("IDLE_WINDOW_SECONDS", "3600")  # LaunchTime is "just now": not idle long enough yet
    record = invoke(capsys)
    assert record["decision"]["action"] == "NONE" and "< window" in record["decision"]["reason"]
    monkeypatch.setenv("IDLE_WINDOW_SECONDS", "0")
    record = invoke(capsys)
    assert record["decision"]["action"] == "STOP" and "recheck" in record
    assert record["outcome"] == [{"instance_id": stack.instance_id, "from": "running", "to": "stopping"}]
    assert stack.state() == "stopped"
    for _ in range(2):  # alarm and schedule both fire again: nothing more happens, no error
        record = invoke(capsys)
        assert record["decision"]["action"] == "NONE" and record["outcome"] == []


def test_queued_task_with_stopped_instance_is_started(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
    stack.put_task("QUEUED", age_s=3 * 86400)  # an orphan past retention: must not wake the GPU
    record = invoke(capsys)
    assert record["decision"]["action"] == "NONE" and stack.state() == "stopped"
    stack.put_task("QUEUED")
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    record = invoke(capsys)
    assert record["decision"]["action"] == "START"
    assert record["outcome"] == [{"instance_id": stack.instance_id, "from": "stopped", "to": "pending"}]
    assert stack.state() == "running"


def test_the_apis_event_is_trigger_api_and_starts_only_the_instances_the_work_needs(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three instances, two stopped and one running a task: one more task waits, so exactly one more starts."""
    extra = [
        i["InstanceId"] for i in stack.ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]
    ]
    stack.ec2.stop_instances(InstanceIds=extra)
    monkeypatch.setenv("GPU_INSTANCE_IDS", ",".join([stack.instance_id, *extra]))
    for _ in range(2):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=1)  # the running one's task, in flight
    event = {"source": contract.API_EVENT_SOURCE, "reason": "submit", "task_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
    record = invoke(capsys, event)
    assert record["trigger"] == "api" and record["cause"] == {"reason": "submit", "task_id": event["task_id"]}
    assert record["decision"]["action"] == "START" and record["decision"]["instance_ids"] == [extra[0]]
    states = stack.ec2.describe_instances(InstanceIds=extra)["Reservations"][0]["Instances"]
    assert sorted(i["State"]["Name"] for i in states) == ["running", "stopped"]
    record = invoke(capsys, event)  # the same event again (Lambda delivers at least once): nothing more starts
    assert record["decision"]["action"] == "NONE" and record["outcome"] == []
    assert "2 task(s) for 3 instance(s): 2 needed, 2 up" in record["decision"]["reason"]


def test_missing_instance_is_not_an_error(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_INSTANCE_IDS", f"i-0000000000000dead, {stack.instance_id}")
    stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    record = invoke(capsys)
    states = {i["instance_id"]: i["state"] for i in record["observation"]["instances"]}
    assert states == {"i-0000000000000dead": "unknown", stack.instance_id: "stopped"}
    assert record["decision"]["instance_ids"] == [stack.instance_id] and stack.state() == "running"


# -- the reads themselves, and the re-check right before StopInstances ------------------------------------------------
def sources(stack: Stack) -> Sources:
    return Sources(
        sqs=stack.sqs,
        dynamodb=stack.ddb,
        ec2=stack.ec2,
        queue_url=stack.queue_url,
        table_name=stack.table,
        status_index=stack.env["TASK_STATUS_INDEX"],
        instance_ids=(stack.instance_id,),
    )


def test_observe_reads_history_and_pages_past_dead_workers(stack: Stack) -> None:
    now = time.time()
    ms = lambda ago: int((now - ago) * 1000)  # noqa: E731
    # Created earliest but finished last: the newest finished_at wins, not the newest created.
    stack.put_task("SUCCEEDED", age_s=7200, finished_at=ms(100))
    stack.put_task("FAILED", age_s=600, finished_at=ms(500))
    stack.put_task("CANCELLED", age_s=300, finished_at=ms(300))
    policy = Policy(heartbeat_stale_s=900)
    assert observe(sources(stack), now, policy).last_finished_at == pytest.approx(ms(100) / 1000)
    # Two dead workers' rows are the newest created; the live one is older and needs a second page.
    stack.put_task("RUNNING", age_s=3 * 3600, heartbeat_at=ms(30))
    for _ in range(2):
        stack.put_task("RUNNING", age_s=3600, heartbeat_at=ms(3000))
    seen = observe(sources(stack), now, policy)
    assert seen.running_heartbeat_at == pytest.approx(ms(30) / 1000) and seen.running_scan_complete
    assert seen.newest_queued_at is None and seen.instances[0].state.value == "running"


def test_recheck_vetoes_a_stop_when_a_task_arrives_between_the_looks(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def clock_that_submits_on_second_look() -> float:
        calls.append(1)
        if len(calls) == 2:  # between the first observation and the re-check, a task is submitted
            stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        return time.time()

    config = ShutdownSettings.from_env(stack.env)
    record = run(config, sources(stack), clock=clock_that_submits_on_second_look)
    assert record["first_decision"]["action"] == "STOP"
    assert record["decision"]["action"] == "NONE" and "re-check" in record["decision"]["reason"]
    assert record["outcome"] == [] and stack.state() == "running"


# -- a stuck worker's task back in the queue (functions/shutdown/recovery.py requeue) ---------------------------------
def test_a_requeue_sends_a_delayed_fresh_message_and_copes_with_a_slow_write_and_a_task_that_moved_on(
    stack: Stack, local_aws: Any
) -> None:
    from core.hosts import HostStore
    from core.message import TaskMessage
    from core.store import TaskStore
    from core.tasks import TaskStatus
    from functions.shutdown.recovery import REQUEUE_DELAY_S, Recovery, requeue, stuck_error
    from tests.test_stuck_worker import hosts_table

    store = TaskStore(local_aws.resource("dynamodb").Table(stack.table), status_index=stack.env["TASK_STATUS_INDEX"])
    hosts = HostStore(stack.ddb, hosts_table(local_aws))
    ticks = iter([0.0, 0.1, 10.0, 10.0 + REQUEUE_DELAY_S])  # the second requeue's write takes the whole delay

    def rec(clock: Any) -> Recovery:
        return Recovery(hosts, stack.ec2, stack.sqs, stack.queue_url, tasks=lambda: store, clock=clock)

    def received(wait_s: int) -> list[tuple[str, str | None]]:
        got = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
        return [(b.task_id, b.enqueue_id) for b in (TaskMessage.parse(m["Body"]) for m in got.get("Messages", []))]

    held = [
        store.claim(store.create(task_type="noop", params={}).task_id, worker="w", stale_after_ms=1).held
        for _ in range(2)
    ]
    quick = requeue(rec(lambda: next(ticks)), held[0], "i-stuck")
    slow = requeue(rec(lambda: next(ticks)), held[1], "i-stuck")
    assert "resent" not in quick and slow["resent"] is True
    for out, task in zip((quick, slow), held, strict=True):
        item = store.get(task.task_id)
        assert item is not None and item.status == TaskStatus.QUEUED and item.error == stuck_error("i-stuck")
        assert item.enqueue_id == out["enqueue_id"] != task.enqueue_id
    # At once only the slow one's second copy (sent undelayed, after the write); the delayed copies come later.
    assert received(0) == [(held[1].task_id, slow["enqueue_id"])]
    time.sleep(REQUEUE_DELAY_S + 0.2)
    later = received(1) + received(1)
    assert sorted(later) == sorted([(held[0].task_id, quick["enqueue_id"]), (held[1].task_id, slow["enqueue_id"])])
    moved = requeue(rec(time.time), held[0], "i-stuck")  # that attempt is no longer RUNNING: rejected, logged
    assert "rejected" in moved and "enqueue_id" not in moved
