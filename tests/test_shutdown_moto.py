"""`shutdown-gpu-lambda`'s handler against moto's server: real boto3 clients over HTTP, built by the handler from env.

moto's EC2 has no `stopping` state (StopInstances lands on `stopped` at once) and never refuses StartInstances, so
the stopping race goes through `Ec2StoppingProxy`: a 127.0.0.1 pass-through in front of moto that makes chosen
instances look the way AWS shows them mid-stop (DescribeInstances: `stopping`; StartInstances:
IncorrectInstanceState). Everything else is moto's own answer.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from functions.shutdown.decision import Policy
from functions.shutdown.handler import Config, handler, run
from functions.shutdown.observe import Sources, observe

INDEX = "status-created_at-index"


@dataclass
class Stack:
    endpoint: str
    sqs: Any
    ddb: Any
    ec2: Any
    queue_url: str
    table: str
    instance_id: str
    env: dict[str, str] = field(default_factory=dict)

    def put_task(self, status: str, *, age_s: float = 0.0, **extra: int) -> str:
        now_ms = int((time.time() - age_s) * 1000)
        task_id = f"t-{uuid.uuid4().hex}"
        item: dict[str, Any] = {"task_id": {"S": task_id}, "status": {"S": status}, "created_at": {"N": str(now_ms)},
                                "updated_at": {"N": str(now_ms)}}
        item.update({k: {"N": str(v)} for k, v in extra.items()})
        self.ddb.put_item(TableName=self.table, Item=item)
        return task_id

    def state(self) -> str:
        out = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


def make_stack(endpoint: str) -> Stack:
    """Resources shaped like the contract (queue: visibility 300 s, 1-day retention; table + status GSI)."""
    suffix = uuid.uuid4().hex[:10]
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    ddb = boto3.client("dynamodb", endpoint_url=endpoint)
    ec2 = boto3.client("ec2", endpoint_url=endpoint)
    queue_url = sqs.create_queue(QueueName=f"gpu_tasks_queue-{suffix}",
                                 Attributes={"VisibilityTimeout": "300", "MessageRetentionPeriod": "86400"})["QueueUrl"]
    table = f"task_store-{suffix}"
    ddb.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"},
                              {"AttributeName": "status", "AttributeType": "S"},
                              {"AttributeName": "created_at", "AttributeType": "N"}],
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": INDEX, "Projection": {"ProjectionType": "ALL"},
                                 "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                                               {"AttributeName": "created_at", "KeyType": "RANGE"}]}],
    )
    run = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                            InstanceInitiatedShutdownBehavior="stop")
    instance_id = run["Instances"][0]["InstanceId"]
    env = {"AWS_ENDPOINT_URL": endpoint, "GPU_INSTANCE_ID": instance_id, "TASK_QUEUE_URL": queue_url,
           "TASK_TABLE_NAME": table, "TASK_STATUS_INDEX": INDEX, "IDLE_WINDOW_SECONDS": "0",
           "MIN_UPTIME_SECONDS": "0", "QUEUED_TASK_MAX_AGE_SECONDS": "86400", "STOPPING_WAIT_SECONDS": "0"}
    return Stack(endpoint, sqs, ddb, ec2, queue_url, table, instance_id, env)


@pytest.fixture
def stack(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    s = make_stack(moto_endpoint)
    for key, value in s.env.items():
        monkeypatch.setenv(key, value)
    yield s
    s.ec2.terminate_instances(InstanceIds=[s.instance_id])


def invoke(capsys: pytest.CaptureFixture[str], event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the handler; return its one JSON log line (and check there is exactly one)."""
    capsys.readouterr()
    handler(event or {"source": "aws.events"}, None)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    record: dict[str, Any] = json.loads(lines[0])
    assert record["event"] == "gpu_idle_decision" and "observation" in record
    return record


def test_running_task_with_empty_visible_queue_is_never_stopped(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_idle_instance_is_stopped_once(stack: Stack, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stack.put_task("SUCCEEDED", age_s=7200, finished_at=int((time.time() - 3600) * 1000))
    monkeypatch.setenv("IDLE_WINDOW_SECONDS", "3600")  # moto's LaunchTime is "just now": not idle long enough yet
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


def test_missing_instance_is_not_an_error(stack: Stack, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_INSTANCE_ID", f"i-0000000000000dead, {stack.instance_id}")
    stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    record = invoke(capsys)
    states = {i["instance_id"]: i["state"] for i in record["observation"]["instances"]}
    assert states == {"i-0000000000000dead": "missing", stack.instance_id: "stopped"}
    assert record["decision"]["instance_ids"] == [stack.instance_id] and stack.state() == "running"


# -- the stopping race ------------------------------------------------------------------------------------------------
class Ec2StoppingProxy:
    """Forwards every request to moto; instances in `stopping` read as mid-stop, and those in `refuse_start` (or
    `stopping`) get AWS's IncorrectInstanceState from StartInstances."""

    ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>IncorrectInstanceState</Code>'
             "<Message>The instance '{0}' is not in a state from which it can be started.</Message></Error></Errors>"
             "<RequestID>proxy</RequestID></Response>")

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.stopping: set[str] = set()
        self.refuse_start: set[str] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, headers, payload = proxy.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        form = parse_qs(body.decode()) if "x-www-form-urlencoded" in headers.get("Content-Type", "") else {}
        action = form.get("Action", [""])[0]
        if action == "StartInstances":
            ids = [v[0] for k, v in form.items() if k.startswith("InstanceId.")]
            refused = [i for i in ids if i in self.stopping | self.refuse_start]
            if refused:
                return 400, [("Content-Type", "text/xml")], self.ERROR.format(refused[0]).encode()
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        try:
            conn.request(method, path, body=body, headers={k: v for k, v in headers.items() if k.lower() != "host"})
            resp = conn.getresponse()
            payload = resp.read()
            out_headers = resp.getheaders()
        finally:
            conn.close()
        if action == "DescribeInstances":
            text = payload.decode()
            for iid in self.stopping:
                text = re.sub(rf"(<instanceId>{iid}</instanceId>.*?)<instanceState>.*?</instanceState>",
                              r"\1<instanceState><code>64</code><name>stopping</name></instanceState>", text,
                              flags=re.S)
            payload = text.encode()
        return resp.status, out_headers, payload

    def __enter__(self) -> Ec2StoppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_task_submitted_after_the_stop_is_started_by_the_next_run(stack: Stack, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    assert invoke(capsys)["decision"]["action"] == "STOP"
    stack.put_task("QUEUED")
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    assert invoke(capsys)["decision"]["action"] == "START" and stack.state() == "running"


def test_task_submitted_while_stopping_waits_for_next_run(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        proxy.stopping.add(stack.instance_id)
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)  # STOPPING_WAIT_SECONDS=0: cannot wait, must say so and not fail
        assert record["observation"]["instances"][0]["state"] == "stopping"
        assert record["decision"]["action"] == "NONE" and "next scheduled run" in record["decision"]["reason"]
        assert record["decision"]["stopping_ids"] == [stack.instance_id]
        proxy.stopping.clear()  # the OS finished shutting down
        record = invoke(capsys)
        assert record["decision"]["action"] == "START" and stack.state() == "running"


def test_task_submitted_while_stopping_is_started_in_the_same_run(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("STOPPING_WAIT_SECONDS", "10")
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        proxy.stopping.add(stack.instance_id)
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        finisher = threading.Timer(0.5, proxy.stopping.clear)
        finisher.start()
        try:
            record = invoke(capsys)
        finally:
            finisher.cancel()
        assert record["first_decision"]["stopping_ids"] == [stack.instance_id]
        assert record["after_wait"]["instances"][0]["state"] == "stopped"
        assert record["decision"]["action"] == "START" and stack.state() == "running"


def test_start_refused_with_incorrect_instance_state_is_logged_not_raised(
        stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        proxy.refuse_start.add(stack.instance_id)  # DescribeInstances lagged: it said stopped, EC2 says stopping
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)
        assert record["decision"]["action"] == "START"
        assert record["outcome"] == [{"instance_id": stack.instance_id, "error": "IncorrectInstanceState",
                                      "note": "left for the next scheduled run"}]
        assert stack.state() == "stopped"


# -- the reads themselves, and the re-check right before StopInstances ------------------------------------------------
def sources(stack: Stack) -> Sources:
    return Sources(sqs=stack.sqs, dynamodb=stack.ddb, ec2=stack.ec2, queue_url=stack.queue_url,
                   table_name=stack.table, status_index=INDEX, instance_ids=(stack.instance_id,))


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


def test_recheck_vetoes_a_stop_when_a_task_arrives_between_the_looks(stack: Stack,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def clock_that_submits_on_second_look() -> float:
        calls.append(1)
        if len(calls) == 2:  # between the first observation and the re-check, a task is submitted
            stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        return time.time()

    config = Config.from_env(stack.env)
    record = run(config, sources(stack), clock=clock_that_submits_on_second_look)
    assert record["first_decision"]["action"] == "STOP"
    assert record["decision"]["action"] == "NONE" and "re-check" in record["decision"]["reason"]
    assert record["outcome"] == [] and stack.state() == "running"
