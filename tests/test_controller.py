"""The controller as the one owner of GPU starts, end to end on moto: a submit through the app nudges it (through
localaws.lambdas' in-process asynchronous invoke), it starts only the instances the work needs, and a `stopping`
instance is started by a scheduled run within one schedule period of reaching `stopped`, on a driven clock."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from localaws.lambdas import LocalController, rate_seconds
from orchestrator.gpu import submit_event
from orchestrator.server import serve_in_thread
from tests.test_orchestrator_gpu import make_app
from tests.test_shutdown_stopping import Ec2StoppingProxy


class DrivenClock:
    """Epoch seconds that move only when told: by the test, or by the controller's own sleep() while it waits."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def advance_to(self, at: float) -> None:
        with self._lock:
            self._now = max(self._now, at)


def states(aws: Any, ids: list[str]) -> list[str]:
    found = {
        i["InstanceId"]: i["State"]["Name"]
        for r in aws.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    }
    return [found[i] for i in ids]


def invoke(controller: LocalController, payload: bytes) -> dict[str, Any]:
    out: dict[str, Any] = controller.client.invoke(
        FunctionName=controller.function_name, InvocationType="Event", Payload=payload
    )
    return out


def test_an_event_invoke_answers_202_before_the_controller_runs(local_aws: Any) -> None:
    gate = threading.Event()

    def held_clock() -> float:  # the run cannot get past its first look until the test lets it
        gate.wait(10)
        return time.time()

    with LocalController(local_aws, clock=held_clock) as controller:
        out = invoke(controller, json.dumps(submit_event("01ARZ3NDEKTSV4RRFFQ69G5FAV")).encode())
        assert out["StatusCode"] == 202 and out["Payload"].read() == b""
        assert not controller.drain(timeout=0.3) and controller.runs == []
        gate.set()
        assert controller.drain()
    assert not controller.alive  # stopped on exit
    [run] = controller.runs
    assert run.trigger == "api" and run.record is not None and run.error is None


def test_a_payload_that_is_not_json_is_refused_as_lambda_refuses_it(controller: LocalController) -> None:
    with pytest.raises(ClientError) as refused:
        invoke(controller, b"not json")
    assert refused.value.response["Error"]["Code"] == "InvalidRequestContentException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert controller.drain() and controller.runs == []


def test_other_invocations_are_moto_s_own(controller: LocalController) -> None:
    with pytest.raises(ClientError) as missing:
        controller.client.invoke(FunctionName="no-such-function", InvocationType="Event", Payload=b"{}")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert controller.runs == []


def test_runs_are_one_at_a_time_in_arrival_order(controller: LocalController) -> None:
    tasks = [f"01ARZ3NDEKTSV4RRFFQ69G5FA{c}" for c in "VWXYZ"]
    for task in tasks:
        invoke(controller, json.dumps(submit_event(task)).encode())
    assert controller.drain()
    assert [r.record["cause"]["task_id"] for r in controller.runs if r.record] == tasks


def test_a_submit_through_the_app_has_the_controller_start_the_stopped_instance(
    local_aws: Any, controller: LocalController
) -> None:
    with serve_in_thread(make_app(local_aws, controller)) as url:
        resp = httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10)
    assert resp.status_code == 202 and resp.json()["gpu"] == {"controller": "notified"}
    assert controller.drain()
    [run] = controller.runs
    assert run.trigger == "api" and run.record is not None
    assert run.record["cause"] == {"reason": "submit", "task_id": resp.json()["task_id"]}
    assert run.record["decision"]["action"] == "START" and states(local_aws, local_aws.instance_ids) == ["running"]


def test_duplicate_deliveries_start_only_the_instances_the_work_needs(local_aws: Any) -> None:
    """Three instances, two tasks, every event delivered twice: exactly two instances run."""
    ec2 = local_aws.client("ec2")
    extra = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]]
    ec2.stop_instances(InstanceIds=extra)
    ids = [*local_aws.instance_ids, *extra]
    fleet = {"GPU_INSTANCE_IDS": ",".join(ids)}
    with (
        LocalController(local_aws, env=fleet, duplicates=True) as controller,
        serve_in_thread(make_app(local_aws, controller, **fleet)) as url,
    ):
        for _ in range(2):
            assert httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10).status_code == 202
            assert controller.drain()
    assert [r.trigger for r in controller.runs] == ["api"] * 4
    starts = [o for r in controller.runs if r.record for o in r.record["outcome"]]
    assert len(starts) == 2 and sorted(states(local_aws, ids)) == ["running", "running", "stopped"]


def test_a_stopping_instance_is_started_by_a_scheduled_run_within_one_period_of_reaching_stopped(
    local_aws: Any,
) -> None:
    """The submit's own run waits out its budget (STOPPING_WAIT_SECONDS, within the function's timeout) while the
    instance is still stopping; the OS finishes 100 s after the submit; the schedule (the stacks' rule, at an
    arbitrary phase) starts it at its next run. Every wait is on the driven clock: no real minute passes."""
    clock = DrivenClock(time.time())
    [instance] = local_aws.instance_ids
    with (
        Ec2StoppingProxy(local_aws.endpoint_url, clock=clock.now) as proxy,
        LocalController(local_aws, endpoint_url=proxy.url, clock=clock.now, sleep=clock.sleep) as controller,
        serve_in_thread(make_app(local_aws, controller)) as url,
    ):
        rate = controller.schedule_rate_s()
        submitted = clock.now()
        stopped_at = submitted + 100
        proxy.stopping_until[instance] = stopped_at
        assert httpx.post(f"{url}/tasks", json={"type": "noop"}, timeout=10).json()["gpu"]["controller"] == "notified"
        assert controller.drain()
        [api_run] = controller.runs
        assert api_run.record is not None and api_run.record["first_decision"]["stopping_ids"] == [instance]
        assert api_run.record["decision"]["action"] == "NONE" and "after_wait" not in api_run.record
        assert clock.now() - submitted >= controller.settings.stopping_wait_s - 5  # it waited, then gave up
        assert states(local_aws, [instance]) == ["stopped"] and instance not in proxy.started_at
        for fire in (submitted + 13 + k * rate for k in range(12)):
            clock.advance_to(fire)
            controller.scheduled()
            assert controller.drain()
            if instance in proxy.started_at:
                break
    [started] = proxy.started_at[instance]
    assert stopped_at <= started <= stopped_at + rate
    last = controller.runs[-1]
    assert last.trigger == "aws.events" and last.record is not None and last.record["decision"]["action"] == "START"
    assert states(local_aws, [instance]) == ["running"]


def test_the_schedule_runs_every_minute(controller: LocalController) -> None:
    """The rule the stacks create for the controller: a lost nudge or a `stopping` instance waits at most this."""
    assert controller.schedule_rate_s() == 60


def test_rate_expressions() -> None:
    assert [rate_seconds(e) for e in ("rate(1 minute)", "rate(5 minutes)", "rate(2 hours)", "rate(1 day)")] == [
        60,
        300,
        7200,
        86400,
    ]
    with pytest.raises(ValueError, match="not a rate"):
        rate_seconds("cron(0 * * * ? *)")
