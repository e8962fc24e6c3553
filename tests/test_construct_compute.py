"""PythonFunction, QueueIdleAlarm and Schedule, each in a stack of its own (with the role or function it needs): its
grants through the shared aws-cdk-style helper, and the AWS limits it refuses, with the one line synth fails with."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from cdktf import TerraformStack

from modules.alarm import QueueIdleAlarm, Schedule
from modules.function import (
    DEAD_LETTER_ACTIONS,
    LOG_ACTIONS,
    FunctionSettings,
    PythonFunction,
    grant_dead_letter,
    grant_logs,
)
from modules.iam import Role
from tests.infra_helpers import assert_grant, fresh_stack, one, refusal, synth

WHERE = {"region": "us-east-1", "account": "123456789012"}


def role_in(stack: TerraformStack) -> Role:
    """One execution role per stack, made on first use."""
    found = stack.node.try_find_child("fn-role")
    if isinstance(found, Role):
        return found
    return Role(stack, "fn-role", name="fn-role", assumed_by="lambda.amazonaws.com", description="The function's")


SETTINGS = {f.name for f in fields(FunctionSettings)}


def function_in(stack: TerraformStack, id: str = "fn", **props: Any) -> PythonFunction:
    """A function of functions/shutdown; `props` are PythonFunction's or its FunctionSettings' (by field name)."""
    props = {
        "name": "shutdown-test",
        "package": "shutdown",
        "handler": "shutdown.handler.handler",
        "role": role_in(stack),
        "environment": {"TASK_QUEUE_URL": "https://sqs.example/q"},
        **WHERE,
        **props,
    }
    settings = FunctionSettings(**{k: v for k, v in props.items() if k in SETTINGS})
    return PythonFunction(stack, id, settings=settings, **{k: v for k, v in props.items() if k not in SETTINGS})


@pytest.fixture(scope="module")
def function() -> PythonFunction:
    return function_in(fresh_stack(), dead_letter_queue_name="shutdown-test-dlq")


def stack_of(construct: Any) -> TerraformStack:
    return TerraformStack.of(construct)


# --- PythonFunction ---


def test_function_alone_synthesizes_its_documented_defaults(function: PythonFunction) -> None:
    doc = synth(stack_of(function))
    fn = one(doc, "aws_lambda_function")
    assert (fn["memory_size"], fn["timeout"], fn["runtime"]) == (128, 60, "python3.11")
    assert "reserved_concurrent_executions" not in fn
    assert one(doc, "aws_cloudwatch_log_group")["retention_in_days"] == 365
    assert one(doc, "aws_sqs_queue")["name"] == "shutdown-test-dlq"


def test_function_generic_grant_is_on_the_function(function: PythonFunction) -> None:
    expected = [(["lambda:InvokeFunction"], [function.arn])]
    assert_grant(stack_of(function), lambda role: function.grant(role, "lambda:InvokeFunction"), expected)


def test_log_and_dead_letter_grants_name_what_the_function_creates(function: PythonFunction) -> None:
    """By name, not by reference (the role's stack is applied first): the names must be the function's."""
    group = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/shutdown-test"
    stack = stack_of(function)
    assert_grant(
        stack, lambda r: grant_logs(r, **WHERE, function_name="shutdown-test"), [(LOG_ACTIONS, [group, f"{group}:*"])]
    )
    queue = "arn:aws:sqs:us-east-1:123456789012:shutdown-test-dlq"
    assert_grant(
        stack, lambda r: grant_dead_letter(r, **WHERE, queue_name="shutdown-test-dlq"), [(DEAD_LETTER_ACTIONS, [queue])]
    )
    doc = synth(stack)
    assert one(doc, "aws_cloudwatch_log_group")["name"] == group.split(":log-group:")[1]
    assert one(doc, "aws_sqs_queue")["name"] == queue.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"memory_mb": 127}, "memory_mb=127 is outside 128..10240 (Lambda MemorySize)"),
        ({"memory_mb": 10241}, "memory_mb=10241 is outside 128..10240 (Lambda MemorySize)"),
        ({"timeout_seconds": 0}, "timeout_seconds=0 is outside 1..900 (Lambda Timeout)"),
        ({"timeout_seconds": 901}, "timeout_seconds=901 is outside 1..900 (Lambda Timeout)"),
        ({"reserved_concurrency": -1}, "reserved_concurrency=-1 is outside 0.. (Lambda ReservedConcurrentExecutions)"),
        (
            {"log_retention_days": 10},
            "log_retention_days=10 is not one of 0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, "
            "180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653 (CloudWatch Logs retention)",
        ),
        ({"name": "f" * 65}, f"name='{'f' * 65}' is not 1-64 characters of A-Za-z0-9_- (Lambda FunctionName)"),
        ({"name": "shutdown.gpu"}, "name='shutdown.gpu' is not 1-64 characters of A-Za-z0-9_- (Lambda FunctionName)"),
        ({"runtime": "nodejs20.x"}, "runtime='nodejs20.x' is not a Python runtime (python3.N)"),
        ({"handler": "a handler"}, "handler='a handler' is not up to 128 non-space characters (Lambda Handler)"),
        (
            {"dead_letter_queue_name": "dlq.fifo"},
            "dead_letter_queue_name='dlq.fifo' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)",
        ),
        (
            {"environment": {"1X": "v"}},
            "environment='1X' is not an environment variable name (Lambda: [A-Za-z][A-Za-z0-9_]*)",
        ),
        (
            {"environment": {"AWS_REGION": "us-east-1"}},
            "environment: AWS_REGION is reserved by the Lambda runtime; do not set it",
        ),
    ],
)
def test_function_refuses_values_outside_lambda_limits(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: function_in(stack, **props)) == f"bad/fn: {problem}"


def test_function_accepts_the_limits_themselves() -> None:
    stack = fresh_stack("edges")
    function_in(stack, "big", name="f" * 64, memory_mb=10240, timeout_seconds=900, log_retention_days=3653)
    function_in(
        stack, "small", name="s", memory_mb=128, timeout_seconds=1, reserved_concurrency=0, log_retention_days=0
    )
    assert len(synth(stack)["resource"]["aws_lambda_function"]) == 2


# --- QueueIdleAlarm and Schedule ---


@pytest.fixture(scope="module")
def triggers() -> tuple[QueueIdleAlarm, Schedule]:
    stack = fresh_stack()
    target = function_in(stack)
    alarm = QueueIdleAlarm(
        stack, "idle", name="QueueEmptyFor30Min", queue_name="tasks", window_minutes=30, target=target
    )
    schedule = Schedule(stack, "schedule", name="idle-check", rate_minutes=5, target=target)
    return alarm, schedule


def test_alarm_and_schedule_alone_synthesize_their_periods(triggers: tuple[QueueIdleAlarm, Schedule]) -> None:
    doc = synth(stack_of(triggers[0]))
    alarm = one(doc, "aws_cloudwatch_metric_alarm")
    assert alarm["evaluation_periods"] == 6 and {
        q["metric"]["period"] for q in alarm["metric_query"] if "metric" in q
    } == {300}
    assert one(doc, "aws_cloudwatch_event_rule")["schedule_expression"] == "rate(5 minutes)"


def test_alarm_generic_grant_is_on_the_alarm(triggers: tuple[QueueIdleAlarm, Schedule]) -> None:
    alarm = triggers[0]
    expected = [(["cloudwatch:DisableAlarmActions"], [alarm.arn])]
    assert_grant(stack_of(alarm), lambda role: alarm.grant(role, "cloudwatch:DisableAlarmActions"), expected)


def test_schedule_generic_grant_is_on_the_rule(triggers: tuple[QueueIdleAlarm, Schedule]) -> None:
    schedule = triggers[1]
    expected = [(["events:DisableRule"], [schedule.arn])]
    assert_grant(stack_of(schedule), lambda role: schedule.grant(role, "events:DisableRule"), expected)


def alarm_in(stack: TerraformStack, **props: Any) -> QueueIdleAlarm:
    target = function_in(stack)
    args = {"name": "QueueEmptyFor30Min", "queue_name": "tasks", "window_minutes": 30, **props}
    return QueueIdleAlarm(stack, "idle", target=target, **args)


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        (
            {"window_minutes": 0},
            "window_minutes=0 is outside 5..1440 (CloudWatch: period x evaluation periods <= 86400 s)",
        ),
        (
            {"window_minutes": 1445},
            "window_minutes=1445 is outside 5..1440 (CloudWatch: period x evaluation periods <= 86400 s)",
        ),
        ({"window_minutes": 32}, "window_minutes=32 is not a whole number of 300 s periods"),
        ({"period_seconds": 45}, "period_seconds=45 is not 10, 20, 30 or a multiple of 60 (CloudWatch)"),
        (
            {"period_seconds": 3600, "window_minutes": 10140},
            "window_minutes=10140 is outside 60..10080 (CloudWatch: period x evaluation periods <= 604800 s)",
        ),
        ({"name": ""}, "name='' is not 1-255 characters (CloudWatch AlarmName)"),
        ({"queue_name": "no spaces"}, "queue_name='no spaces' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)"),
    ],
)
def test_alarm_refuses_periods_cloudwatch_refuses(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: alarm_in(stack, **props)) == f"bad/idle: {problem}"


def test_alarm_accepts_a_one_day_window_and_an_hourly_week() -> None:
    stack = fresh_stack("edges")
    target = function_in(stack)
    QueueIdleAlarm(stack, "day", name="day", queue_name="tasks", window_minutes=1440, target=target)
    QueueIdleAlarm(stack, "week", name="week", queue_name="t", window_minutes=10080, target=target, period_seconds=3600)
    periods = sorted(a["evaluation_periods"] for a in synth(stack)["resource"]["aws_cloudwatch_metric_alarm"].values())
    assert periods == [168, 288]


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"rate_minutes": 0}, "rate_minutes=0 is outside 1.. (EventBridge rate expression: whole minutes)"),
        ({"name": "idle check"}, "name='idle check' is not 1-64 characters of .-_A-Za-z0-9 (EventBridge rule name)"),
        ({"name": "r" * 65}, f"name='{'r' * 65}' is not 1-64 characters of .-_A-Za-z0-9 (EventBridge rule name)"),
    ],
)
def test_schedule_refuses_what_eventbridge_refuses(props: dict[str, Any], problem: str) -> None:
    def build(stack: TerraformStack) -> None:
        Schedule(stack, "schedule", **{"name": "idle-check", "rate_minutes": 5, **props}, target=function_in(stack))

    assert refusal(build) == f"bad/schedule: {problem}"


def test_schedule_of_one_minute_says_minute() -> None:
    stack = fresh_stack("edges")
    Schedule(stack, "schedule", name="every-minute", rate_minutes=1, target=function_in(stack))
    assert one(synth(stack), "aws_cloudwatch_event_rule")["schedule_expression"] == "rate(1 minute)"
