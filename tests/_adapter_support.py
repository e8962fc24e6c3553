"""Helpers shared by the adapter tests: env for a worker with times shrunk to seconds, submitting the way the
orchestrator does (item, then its core.message message), bounded waits, and a counting local HTTP server.

`aws` is conftest's `local_aws` (the synthesized `local` environment in moto) built once per test module instead of
once per test - a build costs seconds and these tests run dozens of them. Each test gets its own copy of the
synthesized queue + DLQ; tasks are isolated by their unique ids in the shared table and bucket.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.message import TaskMessage
from core.store import TaskStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module_aws(moto_endpoint: str, synthesized: Any) -> Any:
    """What tests/conftest.py's `local_aws` builds (moto reset, then every resource of the synthesized stacks)."""
    import localaws

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    return localaws.build(synthesized("local"), moto_endpoint)


@pytest.fixture
def aws(module_aws: Any) -> Any:
    """`module_aws` with a queue and DLQ of this test's own: copies of the synthesized pair (same attributes, the
    redrive pointing at the copy), since SQS allows one purge a minute and in-flight messages survive draining."""
    sqs = module_aws.client("sqs")
    suffix = uuid.uuid4().hex[:8]
    settable = (
        "VisibilityTimeout",
        "ReceiveMessageWaitTimeSeconds",
        "MessageRetentionPeriod",
        "DelaySeconds",
        "MaximumMessageSize",
    )

    def copy_of(url: str, name: str, **extra: str) -> tuple[str, str]:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        new_url = sqs.create_queue(
            QueueName=f"{name}-{suffix}", Attributes={**{k: attrs[k] for k in settable if k in attrs}, **extra}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=new_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return new_url, arn

    dlq_url, dlq_arn = copy_of(module_aws.dlq_url, "dlq")
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=module_aws.queue_url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    queue_url, queue_arn = copy_of(
        module_aws.queue_url, "queue", RedrivePolicy=json.dumps({**redrive, "deadLetterTargetArn": dlq_arn})
    )
    return dataclasses.replace(module_aws, queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url, dlq_arn=dlq_arn)


@pytest.fixture
def store(aws: Any) -> TaskStore:
    """The task table of `aws`, as the adapter's TaskStore."""
    return store_for(aws)


@pytest.fixture(name="types")
def gate_types(tmp_path: Path) -> Path:
    """A task type registry with the gate type (GATE_TYPE) beside the bundled ones."""
    return registry_with(tmp_path / "types.json", GATE_TYPE)


def worker_env(aws: Any, work_dir: Path, **overrides: str) -> dict[str, str]:
    env = dict(aws.env())
    env.update(
        WORK_DIR=str(work_dir),
        WAIT_TIME_SECONDS="1",
        HEARTBEAT_SECONDS="0.2",
        RETRY_BACKOFF_SECONDS="0",
        IDLE_WINDOW_SECONDS="0",  # never power anything off from a test
        DLQ_SWEEP_SECONDS="3600",
        STOP_GRACE_SECONDS="5",
        CLAIM_GRACE_SECONDS="2",
    )
    env.update(overrides)
    return env


def set_visibility(aws: Any, seconds: int) -> None:
    aws.client("sqs").set_queue_attributes(QueueUrl=aws.queue_url, Attributes={"VisibilityTimeout": str(seconds)})


def store_for(aws: Any) -> TaskStore:
    return TaskStore(aws.resource("dynamodb").Table(aws.table_name), status_index=aws.status_index)


def submit(aws: Any, store: TaskStore, task_type: str, params: dict[str, Any]) -> str:
    item = store.create(task_type=task_type, params=params)
    aws.client("sqs").send_message(
        QueueUrl=aws.queue_url, MessageBody=TaskMessage(item.task_id, item.enqueue_id).encode()
    )
    return str(item.task_id)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll until `check()` is truthy; fail with `what` after `timeout` (a bound, not a performance claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def queue_counts(aws: Any, url: str) -> tuple[int, int]:
    attrs = aws.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def registry_with(path: Path, extra: dict[str, Any]) -> Path:
    """The bundled task types plus test-only ones, written to `path` (for TASK_TYPES_FILE)."""
    doc = json.loads((REPO / "core" / "task_types.json").read_text())
    doc["types"].update(extra)
    path.write_text(json.dumps(doc))
    return path


@contextmanager
def inference_server(status: int = 200) -> Iterator[dict[str, Any]]:
    """A local stand-in for the inference server on 127.0.0.1: records each POST, answers JSON."""
    seen: dict[str, Any] = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["requests"].append(body)
            answer = json.dumps({"echo": body["params"], "tokens": 3}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1/infer"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- slots and fleets --------------------------------------------------------------------------------------------------
# A job that says it arrived (a file named after its task in `arrive`), then waits for the test to open `gate` (a
# path that starts to exist), and writes the GPU variables it was given: held for as long as a test needs, with no
# sleep of a guessed length; two jobs both arrived before the gate opened ran at the same time.
GATE_JOB = """
import json, os, sys, time
arrive, gate = sys.argv[1], sys.argv[2]
open(os.path.join(arrive, os.environ["TASK_ID"]), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(gate):
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.02)
names = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
with open(os.path.join(os.environ["OUTPUT_DIR"], "result.json"), "w") as out:
    json.dump({n: os.environ.get(n) for n in names}, out)
"""
GATE_TYPE = {
    "gate": {
        "kind": "command",
        "description": "arrives, waits for the test's gate, reports its GPU variables",
        "params": {"arrive": {"type": "string", "required": True}, "gate": {"type": "string", "required": True}},
        "timeout_s": 120,
        "argv": ["{python}", "-c", GATE_JOB, "{arrive}", "{gate}"],
    }
}


@dataclasses.dataclass(frozen=True)
class Gate:
    """Where gate jobs arrive, and the file that lets them go."""

    arrive: Path
    gate: Path

    @classmethod
    def at(cls, root: Path) -> Gate:
        root.mkdir(parents=True, exist_ok=True)
        (root / "arrived").mkdir()
        return cls(root / "arrived", root / "open")

    def params(self) -> dict[str, str]:
        return {"arrive": str(self.arrive), "gate": str(self.gate)}

    def arrived(self) -> set[str]:
        return {p.name for p in self.arrive.iterdir()}

    def open(self) -> None:
        self.gate.touch()


def record_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """The parameters of each `operation` call made through `client` from now on, in order: a botocore event hook
    on the real client (the call itself still goes to the local AWS)."""
    seen: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    client.meta.events.register(f"provide-client-params.{service}.{operation}", record)
    return seen


def record_answers(client: Any, operation: str) -> list[dict[str, Any]]:
    """What each `operation` call through `client` answered from now on (parsed), in order."""
    seen: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def record(parsed: dict[str, Any], **_: Any) -> None:
        seen.append(parsed)

    client.meta.events.register(f"after-call.{service}.{operation}", record)
    return seen


_IMAGES: dict[str, str] = {}


def _an_image(endpoint_url: str, ec2: Any) -> str:
    """An AMI the local AWS knows (moto's built-in ones survive a reset; listing them costs seconds: once per
    server)."""
    if endpoint_url not in _IMAGES:
        _IMAGES[endpoint_url] = str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    return _IMAGES[endpoint_url]


@dataclasses.dataclass(frozen=True)
class FleetGroup:
    name: str
    instance_ids: list[str]
    hook: str | None


def fleet_group(aws: Any, size: int, *, max_size: int = 4, hook: bool = False, warm_pool: bool = False) -> FleetGroup:
    """An Auto Scaling group of `size` InService instances in the local AWS, from a launch template of its own; with
    `hook`, a termination lifecycle hook as the fleet has (CONTINUE, 300 s); with `warm_pool`, a stopped warm pool
    that takes instances back on scale-in."""
    suffix = uuid.uuid4().hex[:8]
    ec2, autoscaling = aws.client("ec2"), aws.client("autoscaling")
    template = f"gpu-fleet-test-{suffix}"
    image = _an_image(aws.endpoint_url, ec2)
    ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={"ImageId": image})
    name = f"gpu-fleet-{suffix}"
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": template},
        MinSize=0,
        MaxSize=max_size,
        DesiredCapacity=size,
        AvailabilityZones=[f"{aws.region}a"],
    )
    hook_name = f"{name}-handback" if hook else None
    if hook_name:
        autoscaling.put_lifecycle_hook(
            LifecycleHookName=hook_name,
            AutoScalingGroupName=name,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=300,
            DefaultResult="CONTINUE",
        )
    if warm_pool:
        autoscaling.put_warm_pool(
            AutoScalingGroupName=name, PoolState="Stopped", MinSize=0, InstanceReusePolicy={"ReuseOnScaleIn": True}
        )

    def in_service() -> list[str]:
        (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        found = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]
        return found if len(found) == size else []

    return FleetGroup(name, wait_for(f"{size} instances in service", in_service), hook_name)


def lifecycle_state(aws: Any, instance_id: str) -> str | None:
    """The instance's LifecycleState as Auto Scaling reports it (None: no group knows it)."""
    found = aws.client("autoscaling").describe_auto_scaling_instances(InstanceIds=[instance_id])
    return next((i["LifecycleState"] for i in found["AutoScalingInstances"]), None)


def fleet_env(group: FleetGroup, metadata_url: str, **more: str) -> dict[str, str]:
    """A worker's fleet-mode settings: its group (and hook), its metadata service, a short watch interval."""
    env = {"GPU_FLEET_NAME": group.name, "INSTANCE_METADATA_URL": metadata_url, "METADATA_WATCH_SECONDS": "0.2"}
    if group.hook:
        env["TERMINATION_HOOK_NAME"] = group.hook
    return {**env, **more}


@contextmanager
def running(worker: Any) -> Iterator[threading.Thread]:
    """`worker.run()` in a thread for the block; then a stop (as the first SIGTERM) and a bounded join."""
    thread = threading.Thread(target=worker.run, name="worker-run", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


# -- liveness and metrics ----------------------------------------------------------------------------------------------
def create_hosts_table(aws: Any) -> str:
    """A GPU hosts table in the local AWS, keyed as core/hosts.py reads it (`instance_id` + `sk`, both strings), named
    for one test; returns its name."""
    name = f"gpu_hosts-{uuid.uuid4().hex[:8]}"
    aws.client("dynamodb").create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "instance_id", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    return name


def create_log_group(aws: Any) -> str:
    """A CloudWatch Logs group in the local AWS, named for one test; returns its name."""
    name = f"/gpu-orchestrator/test/metrics-{uuid.uuid4().hex[:8]}"
    aws.client("logs").create_log_group(logGroupName=name)
    return name


def log_messages(aws: Any, group: str, stream: str) -> list[str]:
    """Every message of one log stream, oldest first."""
    found = aws.client("logs").get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)
    return [event["message"] for event in found["events"]]
