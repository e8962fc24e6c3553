"""The adapter's on-node autostop: its clock logic with an injected clock, then its real checks against moto.

In the moto tests, `poweroff` stops the moto instance with the test's own admin client: that is what the OS
shutting down does to a VM launched with InstanceInitiatedShutdownBehavior=stop. The adapter itself never calls
ec2:StopInstances (its role cannot).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from adapter.autostop import AutoStop, AutoStopOutcome
from tests.test_shutdown_moto import Stack, stack_from


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Checks:
    """Answers in order; records how often it was asked."""

    def __init__(self, *answers: str | None | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(checks: Checks, clock: Clock, window: float = 60.0) -> tuple[AutoStop, list[float]]:
    powered: list[float] = []
    return AutoStop(
        window, checks=checks, poweroff=lambda: powered.append(clock.t), clock=clock, recheck_s=30.0
    ), powered


def test_powers_off_once_after_the_window_measured_from_the_last_task() -> None:
    clock, checks = Clock(), Checks(None)
    auto, powered = make(checks, clock)
    clock.t += 59
    assert auto.maybe_stop().outcome == AutoStopOutcome.WAITING and checks.calls == 0  # no AWS reads before the window
    auto.note_busy()  # a task started...
    clock.t += 3600
    auto.note_busy()  # ...and ended an hour later
    clock.t += 59
    assert auto.maybe_stop().outcome == AutoStopOutcome.WAITING
    clock.t += 1
    assert auto.maybe_stop().outcome == AutoStopOutcome.POWERED_OFF and powered == [clock.t]
    clock.t += 600
    assert auto.maybe_stop().outcome == AutoStopOutcome.POWERED_OFF and len(powered) == 1 and checks.calls == 1


def test_blocked_check_waits_then_rechecks() -> None:
    clock, checks = Clock(), Checks("1 message(s) in flight", None)
    auto, powered = make(checks, clock)
    clock.t += 60
    assert auto.maybe_stop().outcome == AutoStopOutcome.BLOCKED
    assert auto.maybe_stop().outcome == AutoStopOutcome.WAITING  # no new read until recheck_s has passed
    assert checks.calls == 1 and not powered
    clock.t += 30
    assert auto.maybe_stop().outcome == AutoStopOutcome.POWERED_OFF and checks.calls == 2 and powered


def test_failed_read_or_poweroff_never_counts_as_stopped() -> None:
    clock, checks = Clock(), Checks(RuntimeError("throttled"), None)
    failures = [OSError("systemctl missing")]

    def poweroff() -> None:
        if failures:
            raise failures.pop()

    auto = AutoStop(10.0, checks=checks, poweroff=poweroff, clock=clock, recheck_s=5.0)
    clock.t += 10
    assert auto.maybe_stop().outcome == AutoStopOutcome.CHECK_FAILED
    clock.t += 5
    result = auto.maybe_stop()
    assert result.outcome == AutoStopOutcome.CHECK_FAILED and "poweroff failed" in result.detail
    clock.t += 5
    assert auto.maybe_stop().outcome == AutoStopOutcome.POWERED_OFF


def test_zero_window_disables_on_node_autostop() -> None:
    clock, checks = Clock(), Checks(None)
    auto, powered = make(checks, clock, window=0)
    clock.t += 10**6
    assert auto.maybe_stop().outcome == AutoStopOutcome.DISABLED and checks.calls == 0 and not powered


# -- against moto ------------------------------------------------------------------------------------------------------
@pytest.fixture
def stack(local_aws: Any) -> Stack:
    """The synthesized `local` environment (conftest's `local_aws`), its GPU running; `env` is the adapter's."""
    s = stack_from(local_aws)
    s.env = local_aws.env()
    return s


def real_autostop(stack: Stack, window_s: float) -> tuple[AutoStop, list[float]]:
    """Built exactly as the adapter builds it (from its environment), with the window shrunk to seconds."""
    powered: list[float] = []
    env = {**stack.env, "IDLE_WINDOW_SECONDS": str(window_s)}
    holder: list[AutoStop] = []

    def os_shutdown() -> None:  # the VM stops because its OS shut down (shutdown behaviour = stop)
        powered.append(holder[0].idle_for())
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])

    holder.append(AutoStop.from_env(env, sqs=stack.sqs, dynamodb=stack.ddb, poweroff=os_shutdown, recheck_s=0.2))
    return holder[0], powered


def loop_until(auto: AutoStop, done: Callable[[], bool], turns: int) -> list[AutoStopOutcome]:
    """The adapter's idle loop turns, shortened: one maybe_stop per turn, bounded."""
    seen: list[AutoStopOutcome] = []
    for _ in range(turns):
        seen.append(auto.maybe_stop().outcome)
        if done():
            break
        time.sleep(0.05)
    return seen


def test_adapter_stops_its_own_idle_machine_after_the_window(stack: Stack) -> None:
    auto, powered = real_autostop(stack, window_s=1.0)
    seen = loop_until(auto, lambda: bool(powered), turns=100)
    assert seen[-1] == AutoStopOutcome.POWERED_OFF
    assert len(powered) == 1 and powered[0] >= 1.0  # it waited the whole window of idleness
    assert stack.state() == "stopped"
    assert auto.maybe_stop().outcome == AutoStopOutcome.POWERED_OFF and len(powered) == 1


def test_adapter_does_not_stop_while_a_task_runs_elsewhere_then_does(stack: Stack) -> None:
    # Another worker holds a task (message in flight, RUNNING row heartbeating): this node is idle but must wait.
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    msg = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=1)["Messages"][0]
    task_id = stack.put_task("RUNNING", heartbeat_at=int(time.time() * 1000))
    auto, powered = real_autostop(stack, window_s=0.5)
    seen = loop_until(auto, lambda: bool(powered), turns=30)
    assert AutoStopOutcome.BLOCKED in seen and not powered and stack.state() == "running"
    # The task finishes: row terminal, message deleted. The next recheck powers off.
    stack.ddb.update_item(
        TableName=stack.table,
        Key={"task_id": {"S": task_id}},
        UpdateExpression="SET #s = :done, finished_at = :t",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":done": {"S": "SUCCEEDED"}, ":t": {"N": str(int(time.time() * 1000))}},
    )
    stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=msg["ReceiptHandle"])
    seen = loop_until(auto, lambda: bool(powered), turns=100)
    assert seen[-1] == AutoStopOutcome.POWERED_OFF and stack.state() == "stopped"
