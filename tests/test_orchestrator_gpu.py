"""Starting the GPU: stopped -> started, running -> left alone, and the `stopping` race, against moto's EC2."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from core.instances import InstanceState
from orchestrator.app import create_app
from orchestrator.gpu import GpuStarter, StartRetry
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings

FAST = StartRetry(first_delay_s=0.01, factor=2.0, max_delay_s=0.05, deadline_s=30.0)


class StoppingEc2:
    """The real moto EC2 client, seen through an instance that is still `stopping`.

    moto cannot hold an instance in `stopping`: its StopInstances answers `stopping` but leaves the instance
    `stopped` at once, and moto's state manager has no EC2 instance model. So this wrapper passes every call to the
    real moto client and only rewrites what real EC2 would show during the stop: while `stopping_left` describes
    remain (and `released` is not set) DescribeInstances reports `stopping`, and StartInstances meanwhile fails with
    the IncorrectInstanceState error EC2 returns for a stopping instance. `refuse_starts` makes the next starts
    fail that way even though the describe said `stopped` (the instance began stopping between the two calls).
    The start that finally happens is moto's own, so the test reads the outcome from moto, not from the wrapper."""

    def __init__(self, real: Any, stopping_describes: int = 0, refuse_starts: int = 0) -> None:
        self.real = real
        self.stopping_left = stopping_describes
        self.refuse_left = refuse_starts
        self.released = threading.Event()
        self.describes = 0
        self.starts = 0
        self.refused = 0
        self._said_stopping = False  # what the last describe showed: a start now would find it stopping
        self._lock = threading.Lock()

    def _stopping(self) -> bool:
        return self.stopping_left > 0 and not self.released.is_set()

    def describe_instances(self, **kwargs: Any) -> Any:
        out = self.real.describe_instances(**kwargs)
        with self._lock:
            self.describes += 1
            if self._stopping():
                self.stopping_left -= 1
                for reservation in out["Reservations"]:
                    for inst in reservation["Instances"]:
                        inst["State"] = {"Code": 64, "Name": "stopping"}
                self._said_stopping = True
            else:
                self._said_stopping = False
        return out

    def start_instances(self, **kwargs: Any) -> Any:
        with self._lock:
            self.starts += 1
            if self._said_stopping or self.refuse_left > 0:
                self.refuse_left = max(self.refuse_left - 1, 0)
                self.refused += 1
                raise ClientError(
                    {"Error": {"Code": "IncorrectInstanceState", "Message": "instance is stopping"}}, "StartInstances"
                )
        return self.real.start_instances(**kwargs)


@pytest.fixture
def ec2(moto_endpoint: str) -> Any:
    """The real moto EC2 client. GpuStarter needs nothing but instances, so these tests launch their own in the
    session's moto server instead of building the whole local environment (the end-to-end test below does)."""
    return boto3.client("ec2", endpoint_url=moto_endpoint, region_name="us-east-1")


def launch(ec2: Any, count: int = 1) -> list[str]:
    """`count` new instances, stopped (as the GPU sits between bursts of work)."""
    out = ec2.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count)
    ids = [i["InstanceId"] for i in out["Instances"]]
    ec2.stop_instances(InstanceIds=ids)
    return ids


def state(ec2: Any, instance_id: str) -> str:
    out = ec2.describe_instances(InstanceIds=[instance_id])
    return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_moto_cannot_hold_stopping(ec2: Any) -> None:
    """Why the wrapper exists: moto says `stopping` in the StopInstances answer, but the instance is stopped at once."""
    [instance] = launch(ec2)
    ec2.start_instances(InstanceIds=[instance])
    answer = ec2.stop_instances(InstanceIds=[instance])
    assert answer["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    assert state(ec2, instance) == "stopped"


def test_stopped_instance_is_started_and_running_one_left_alone(ec2: Any) -> None:
    [instance] = launch(ec2)
    wrapped = StoppingEc2(ec2)  # reports nothing unusual: counts calls only
    starter = GpuStarter(wrapped, [instance], FAST)
    assert starter.ensure_started() == {instance: InstanceState.PENDING}  # what StartInstances answers
    assert state(ec2, instance) == "running" and wrapped.starts == 1
    assert starter.ensure_started() == {instance: InstanceState.RUNNING}
    assert wrapped.starts == 1 and not starter.retrying()


def test_stopping_instance_is_started_by_the_background_retry(ec2: Any) -> None:
    [instance] = launch(ec2)
    wrapped = StoppingEc2(ec2, stopping_describes=3)
    starter = GpuStarter(wrapped, [instance], FAST)
    try:
        assert starter.ensure_started() == {instance: InstanceState.STOPPING}
        assert starter.join(timeout=10)
        assert state(ec2, instance) == "running"
        assert wrapped.describes == 4 and wrapped.starts == 1 and wrapped.refused == 0
    finally:
        starter.close()


def test_start_refused_after_a_stopped_describe_is_retried(ec2: Any) -> None:
    [instance] = launch(ec2)
    wrapped = StoppingEc2(ec2, refuse_starts=2)
    starter = GpuStarter(wrapped, [instance], FAST)
    try:
        assert starter.ensure_started() == {instance: InstanceState.STOPPING}
        assert starter.join(timeout=10)
        assert state(ec2, instance) == "running" and wrapped.refused == 2 and wrapped.starts == 3
    finally:
        starter.close()


def test_retry_gives_up_at_its_deadline(ec2: Any, caplog: pytest.LogCaptureFixture) -> None:
    [instance] = launch(ec2)
    wrapped = StoppingEc2(ec2, stopping_describes=10**9)
    starter = GpuStarter(wrapped, [instance], dataclasses.replace(FAST, deadline_s=0.3))
    with caplog.at_level(logging.ERROR, logger="orchestrator.gpu"):
        starter.ensure_started()
        assert starter.join(timeout=10)
    assert "gpu_start_gave_up" in caplog.text and wrapped.describes > 1
    assert state(ec2, instance) == "stopped"  # the shutdown Lambda's next run takes over


def test_every_configured_instance_is_started(ec2: Any) -> None:
    ids = launch(ec2, 3)
    ec2.start_instances(InstanceIds=ids[:1])  # one running, two stopped
    GpuStarter(ec2, ids, FAST).ensure_started()
    assert [state(ec2, i) for i in ids] == ["running"] * 3


def test_unknown_instance_never_fails_the_caller(ec2: Any) -> None:
    starter = GpuStarter(ec2, ["i-0123456789abcdef0"], dataclasses.replace(FAST, deadline_s=0.1))
    assert starter.ensure_started() == {"i-0123456789abcdef0": InstanceState.UNKNOWN}
    assert starter.join(timeout=10)


def test_submit_while_stopping_answers_at_once_and_the_gpu_ends_started(local_aws: Any) -> None:
    """The instance stays `stopping` until the test releases it, so a POST that waited for the retry could not
    return: the 202 proves the submit does not block, and moto's state proves the retry started the instance."""
    real = local_aws.client("ec2")
    [instance] = local_aws.instance_ids
    ec2 = StoppingEc2(real, stopping_describes=10**9)
    settings = dataclasses.replace(Settings.from_env({**local_aws.env(), "ORCHESTRATOR_INSECURE": "1"}), gpu_retry=FAST)
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    app = create_app(settings, Clients(sqs=local_aws.client("sqs"), ec2=ec2, table=table))
    with serve_in_thread(app) as url:
        resp = httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10)
        assert resp.status_code == 202 and resp.json()["status"] == "QUEUED"
        starter: GpuStarter = app.state.starter
        assert starter.retrying() and state(real, instance) == "stopped"
        ec2.released.set()  # the stop completes
        assert starter.join(timeout=10)
        assert state(real, instance) == "running"
