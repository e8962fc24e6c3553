"""The API's side of starting GPUs: one asynchronous invoke of the controller per accepted submit, which never waits
and never raises; the starts themselves (stopped, running, `stopping`, refused, unknown) are the controller's, run
here through localaws.lambdas' in-process invoke against moto, with tests/test_shutdown_stopping.py's proxy where
an instance must look mid-stop (moto cannot hold `stopping`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from localaws.lambdas import LocalController
from localaws.server import free_port
from orchestrator.app import create_app
from orchestrator.gpu import ControllerNotifier, NudgeStatus, submit_event
from orchestrator.server import serve_in_thread
from orchestrator.settings import NUDGE_CONFIG, Clients, Settings
from tests.test_shutdown_stopping import Ec2StoppingProxy

TASK = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def ec2(moto_endpoint: str) -> Any:
    return boto3.client("ec2", endpoint_url=moto_endpoint, region_name="us-east-1")


def state(ec2: Any, instance_id: str) -> str:
    out = ec2.describe_instances(InstanceIds=[instance_id])
    return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


def make_app(aws: Any, controller: LocalController, **env: str) -> Any:
    settings = Settings.from_env({**aws.env(), **controller.env(), "ORCHESTRATOR_INSECURE": "1", **env})
    table = aws.resource("dynamodb").Table(settings.table_name)
    clients = Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table)
    return create_app(settings, clients)


@pytest.fixture
def api(local_aws: Any) -> Iterator[tuple[httpx.Client, LocalController]]:
    with (
        LocalController(local_aws) as controller,
        serve_in_thread(make_app(local_aws, controller)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client, controller


def test_moto_cannot_hold_stopping(ec2: Any) -> None:
    """Why the proxy exists: moto says `stopping` in the StopInstances answer, but the instance is stopped at once."""
    [instance] = [
        i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
    ]
    answer = ec2.stop_instances(InstanceIds=[instance])
    assert answer["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    assert state(ec2, instance) == "stopped"


def test_the_orchestrator_never_starts_or_stops_an_instance() -> None:
    sources = {p.name: p.read_text() for p in (Path(__file__).parent.parent / "orchestrator").glob("*.py")}
    assert "gpu.py" in sources
    for word in ("StartInstances", "start_instances", "StopInstances", "stop_instances", "change_state"):
        assert [name for name, text in sources.items() if word in text] == [], word


def test_a_nudge_is_one_event_invoke_carrying_the_task(local_aws: Any) -> None:
    with LocalController(local_aws) as controller:
        notifier = ControllerNotifier(controller.client, controller.function_name)
        nudge = notifier.notify(TASK)
        assert nudge.status is NudgeStatus.NOTIFIED and nudge.view() == {"controller": "notified"}
        assert controller.drain()
    [run] = controller.runs
    assert run.event == submit_event(TASK) == {"source": "gpu-orchestrator.api", "reason": "submit", "task_id": TASK}
    assert (
        run.trigger == "api" and run.record is not None and run.record["cause"] == {"reason": "submit", "task_id": TASK}
    )
    assert notifier.health()["last_nudge"]["task_id"] == TASK and notifier.health()["last_failure"] is None


def test_a_nudge_never_raises_when_lambda_cannot_be_reached() -> None:
    """Nothing listens on the port: the submit's bounded client config gives up fast and the nudge says so."""
    unreachable = boto3.client(
        "lambda", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1", config=NUDGE_CONFIG
    )
    notifier = ControllerNotifier(unreachable, "shutdown-gpu-lambda-local")
    began = time.monotonic()
    nudge = notifier.notify(TASK)
    assert nudge.status is NudgeStatus.FAILED and "Could not connect" in (nudge.error or "")
    assert time.monotonic() - began < 15
    failure = notifier.health()["last_failure"]
    assert failure["controller"] == "failed" and failure["task_id"] == TASK and failure["error"] == nudge.error


def test_stopped_instance_is_started_and_running_one_left_alone(
    api: tuple[httpx.Client, LocalController], local_aws: Any
) -> None:
    client, controller = api
    [instance] = local_aws.instance_ids
    for _ in range(2):
        assert client.post("/tasks", json={"type": "noop"}).json()["gpu"] == {"controller": "notified"}
        assert controller.drain()
    first, second = (r.record for r in controller.runs)
    assert first is not None and first["outcome"] == [{"instance_id": instance, "from": "stopped", "to": "pending"}]
    assert second is not None and second["decision"]["action"] == "NONE" and second["outcome"] == []
    assert state(local_aws.client("ec2"), instance) == "running"


def test_submit_while_stopping_answers_at_once_and_the_gpu_ends_started(local_aws: Any) -> None:
    """The instance stays `stopping` until the test releases it, and the controller waits for it within its run:
    the 202 while that run is still waiting proves the submit does not block on the start."""
    [instance] = local_aws.instance_ids
    with (
        Ec2StoppingProxy(local_aws.endpoint_url) as proxy,
        LocalController(local_aws, endpoint_url=proxy.url, env={"STOPPING_WAIT_SECONDS": "20"}) as controller,
        serve_in_thread(make_app(local_aws, controller)) as url,
    ):
        proxy.stopping[instance] = None
        resp = httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10)
        assert resp.status_code == 202 and resp.json()["status"] == "QUEUED"
        assert not controller.drain(timeout=0.5)  # the controller's run is still waiting for `stopped`
        proxy.stopping.clear()  # the stop completes
        assert controller.drain(timeout=30)
    [run] = controller.runs
    assert run.record is not None and run.record["first_decision"]["stopping_ids"] == [instance]
    assert run.record["after_wait"]["instances"][0]["state"] == "stopped"
    assert run.record["decision"]["action"] == "START" and state(local_aws.client("ec2"), instance) == "running"


def test_a_start_refused_by_ec2_is_left_to_the_next_run(local_aws: Any) -> None:
    """DescribeInstances said stopped, StartInstances said IncorrectInstanceState (the instance began stopping in
    between): the run logs it, the submit is unaffected, and the next scheduled run starts the instance."""
    [instance] = local_aws.instance_ids
    with (
        Ec2StoppingProxy(local_aws.endpoint_url) as proxy,
        LocalController(local_aws, endpoint_url=proxy.url) as controller,
        serve_in_thread(make_app(local_aws, controller)) as url,
    ):
        proxy.refuse_start.add(instance)
        assert httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10).status_code == 202
        assert controller.drain()
        proxy.refuse_start.clear()
        controller.scheduled()
        assert controller.drain()
    refused, started = (r.record for r in controller.runs)
    assert refused is not None and refused["outcome"][0]["error"] == "IncorrectInstanceState"
    assert started is not None and started["outcome"][0]["to"] == "pending"
    assert state(local_aws.client("ec2"), instance) == "running"


def test_an_unknown_instance_never_fails_the_caller(local_aws: Any) -> None:
    unknown = {"GPU_INSTANCE_IDS": "i-0123456789abcdef0"}
    with (
        LocalController(local_aws, env=unknown) as controller,
        serve_in_thread(make_app(local_aws, controller, **unknown)) as url,
    ):
        resp = httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10)
        health = httpx.get(f"{url}/healthz", timeout=10)
        assert controller.drain()
    assert resp.status_code == 202 and resp.json()["gpu"] == {"controller": "notified"}
    assert health.status_code == 503 and health.json()["gpu"] == {"i-0123456789abcdef0": "unknown"}
    [run] = controller.runs
    assert run.record is not None and "missing" in run.record["decision"]["reason"]
