"""AlarmTopic, OperationsAlarms and OperationsDashboard, each built in a stack of its own: the resources and policies
they synthesize, the metric names they watch (core.metrics'), the dashboard body, their grants through the shared
aws-cdk-style helper, and the AWS limits each refuses, with the one line synth fails with."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from cdktf import TerraformStack
from constructs import Construct

from core import metrics
from modules.observability import (
    AGE_ALARM,
    DLQ_ALARM,
    MAX_BODY_BYTES,
    MEANINGS,
    OVERDUE_ALARM,
    PREFIX_MAX,
    STUCK_ALARM,
    AlarmTopic,
    OperationsAlarms,
    OperationsDashboard,
    dashboard_body,
)
from modules.props import ConstructPropError
from modules.queue import TaskQueue
from tests.infra_helpers import assert_grant, fresh_stack, one, reference, refusal, resources, synth

WHERE = {"region": "us-east-1", "account": "123456789012"}
EMAILS = ("ops@example.com", "oncall@example.org")
NAMESPACE = "GpuOrchestrator"
PREFIX = "gpu-orchestrator-test"
ALARMS_ONLY = {
    "ArnLike": {"aws:SourceArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:*"},
    "StringEquals": {"aws:SourceAccount": "123456789012"},
}
OURS = {m.name for m in metrics.ALL}
CLOUDWATCH = {"Service": "cloudwatch.amazonaws.com"}
KEY_USE = ["kms:Decrypt", "kms:GenerateDataKey*"]  # what CloudWatch needs of an encrypted topic's key


@dataclass
class Built:
    stack: TerraformStack
    queue: TaskQueue
    topic: AlarmTopic
    alarms: OperationsAlarms
    dashboard: OperationsDashboard
    doc: dict[str, Any]


def build(stack: TerraformStack, emails: tuple[str, ...] = EMAILS, group: str | None = "gpu-fleet-test") -> Built:
    """The three constructs as the alarm stack wires them: the task queue's name is a reference, the DLQ's plain."""
    queue = TaskQueue(stack, "tasks", name="tasks", dlq_name="tasks_dlq")
    topic = AlarmTopic(stack, "topic", name="ops-alarms", emails=emails, **WHERE)
    alarms = OperationsAlarms(
        stack, "alarms", prefix=PREFIX, queue_name=queue.name, dlq_name="tasks_dlq", namespace=NAMESPACE, topic=topic
    )
    dashboard = OperationsDashboard(
        stack, "dash", name="gpu-orchestrator-ops", region="us-east-1", alarms=alarms, group_name=group
    )
    return Built(stack, queue, topic, alarms, dashboard, synth(stack))


@pytest.fixture(scope="module")
def built() -> Built:
    return build(fresh_stack())


@pytest.fixture(scope="module")
def plain() -> Built:
    """The emails reversed, and no Auto Scaling group (adopt or create mode)."""
    return build(fresh_stack("plain"), emails=EMAILS[::-1], group=None)


def ref(built: Built, token: str) -> str:
    return reference(built.stack, token)


def allow(sid: str, principal: Any, action: Any, resource: str, condition: Any = None) -> dict[str, Any]:
    """A rendered Allow statement, as modules/iam.py writes it."""
    found = {"Sid": sid, "Effect": "Allow", "Principal": principal, "Action": action, "Resource": resource}
    return found | ({"Condition": condition} if condition else {})


def statements(document: str) -> list[dict[str, Any]]:
    parsed = json.loads(document)
    assert parsed["Version"] == "2012-10-17"
    return list(parsed["Statement"])


# --- AlarmTopic ---


def test_topic_is_encrypted_with_a_key_cloudwatch_alarms_may_use(built: Built) -> None:
    topic = one(built.doc, "aws_sns_topic")
    assert topic == {"name": "ops-alarms", "kms_master_key_id": ref(built, built.topic.key_arn)}
    key = one(built.doc, "aws_kms_key")
    assert (key["enable_key_rotation"], key["deletion_window_in_days"]) == (True, 30)
    assert statements(key["policy"]) == [
        allow("AccountIamPolicies", {"AWS": "arn:aws:iam::123456789012:root"}, "kms:*", "*"),
        allow("CloudWatchAlarms", CLOUDWATCH, KEY_USE, "*", ALARMS_ONLY),
    ]


def test_topic_policy_lets_only_this_accounts_alarms_publish(built: Built) -> None:
    (topic_policy,) = resources(built.doc, "aws_sns_topic_policy")
    assert topic_policy["arn"] == ref(built, built.topic.arn)
    expected = allow("CloudWatchAlarms", CLOUDWATCH, ["sns:Publish"], ref(built, built.topic.arn), ALARMS_ONLY)
    assert statements(topic_policy["policy"]) == [expected]


def test_each_email_is_subscribed_once_under_an_id_of_its_own(built: Built, plain: Built) -> None:
    subscriptions = built.doc["resource"]["aws_sns_topic_subscription"]
    assert sorted(s["endpoint"] for s in subscriptions.values()) == sorted(EMAILS)
    assert {(s["protocol"], s["topic_arn"]) for s in subscriptions.values()} == {("email", ref(built, built.topic.arn))}
    # The same addresses in another order are the same resources: reordering the list replaces nothing.
    assert set(plain.doc["resource"]["aws_sns_topic_subscription"]) == set(subscriptions)


def test_topic_without_emails_has_no_subscription() -> None:
    stack = fresh_stack("quiet")
    AlarmTopic(stack, "topic", name="quiet", **WHERE)
    assert resources(synth(stack), "aws_sns_topic_subscription") == []


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (
            lambda t, r: t.grant(r, "sns:ListSubscriptionsByTopic"),
            lambda t: [(["sns:ListSubscriptionsByTopic"], [t.arn])],
        ),
        (lambda t, r: t.grant_subscribe(r), lambda t: [(["sns:Subscribe"], [t.arn])]),
        (lambda t, r: t.grant_publish(r), lambda t: [(["sns:Publish"], [t.arn]), (KEY_USE, [t.key_arn])]),
    ],
    ids=["generic", "subscribe", "publish"],
)
def test_topic_grants(built: Built, grant: Any, expected: Any) -> None:
    assert_grant(built.stack, lambda role: grant(built.topic, role), expected(built.topic))


def test_a_topic_grant_refuses_another_services_actions(built: Built) -> None:
    with pytest.raises(ConstructPropError) as err:
        assert_grant(built.stack, lambda role: built.topic.grant(role, "sqs:SendMessage"), [])
    assert str(err.value) == (
        "test/topic: actions=('sqs:SendMessage',) must be one or more sns:* actions (the construct's own service)"
    )


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"name": ""}, "name='' is not 1-256 characters of A-Za-z0-9-_ (SNS topic name)"),
        ({"name": "ops.alarms"}, "name='ops.alarms' is not 1-256 characters of A-Za-z0-9-_ (SNS topic name)"),
        ({"name": "a" * 257}, f"name='{'a' * 257}' is not 1-256 characters of A-Za-z0-9-_ (SNS topic name)"),
        ({"account": "12345"}, "account='12345' is not a 12-digit AWS account id"),
        ({"emails": ("ops",)}, "emails='ops' is not an email address (SNS email endpoint)"),
        ({"emails": ("a@b.io", "a@b.io")}, "emails=('a@b.io', 'a@b.io') lists an address twice"),
    ],
)
def test_topic_refuses_what_sns_refuses(props: dict[str, Any], problem: str) -> None:
    args = {"name": "ops-alarms", **WHERE, **props}
    assert refusal(lambda stack: AlarmTopic(stack, "topic", **args)) == f"bad/topic: {problem}"


# --- OperationsAlarms ---


def alarm(built: Built, suffix: str) -> dict[str, Any]:
    return one(built.doc, "aws_cloudwatch_metric_alarm", alarm_name=f"{PREFIX}-{suffix}")


def metric_of(query: dict[str, Any]) -> tuple[str, str, dict[str, str], str, int]:
    m = query["metric"]
    return m["namespace"], m["metric_name"], m.get("dimensions", {}), m["stat"], m["period"]


def test_every_alarm_notifies_the_topic_and_treats_no_data_as_fine(built: Built) -> None:
    found = resources(built.doc, "aws_cloudwatch_metric_alarm")
    suffixes = ("oldest-task-waiting", "dead-letters", "tasks-overdue", "stuck-hosts")
    assert sorted(a["alarm_name"] for a in found) == sorted(f"{PREFIX}-{s}" for s in suffixes)
    assert list(built.alarms.alarms) == [f"{PREFIX}-{s}" for s in MEANINGS]
    topic = ref(built, built.topic.arn)
    for a in found:
        assert (a["alarm_actions"], a["ok_actions"], a["treat_missing_data"]) == ([topic], [topic], "notBreaching")
        periods = (a["evaluation_periods"], a["datapoints_to_alarm"])
        assert (a["comparison_operator"], *periods) == ("GreaterThanThreshold", 1, 1)
    assert sorted(ref(built, arn) for arn in built.alarms.arns) == sorted(
        f"${{aws_cloudwatch_metric_alarm.{address}.arn}}"
        for address in built.doc["resource"]["aws_cloudwatch_metric_alarm"]
    )


def test_the_queue_alarms_watch_sqs_metrics_of_the_queue_and_its_dlq(built: Built) -> None:
    age, dlq = alarm(built, AGE_ALARM), alarm(built, DLQ_ALARM)
    assert age["threshold"] == 3600 and "3600 s" in age["alarm_description"]
    (query,) = age["metric_query"]
    assert query["return_data"] is True
    queue = ref(built, built.queue.name)
    assert metric_of(query) == ("AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": queue}, "Maximum", 300)
    (query,) = dlq["metric_query"]
    assert dlq["threshold"] == 0
    expected = ("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "tasks_dlq"}, "Maximum", 300)
    assert metric_of(query) == expected


def test_the_program_alarms_watch_core_metrics_names(built: Built) -> None:
    (query,) = alarm(built, OVERDUE_ALARM)["metric_query"]
    assert metric_of(query) == (NAMESPACE, metrics.TASKS_OVERDUE.name, {}, "Maximum", 300)
    stuck = alarm(built, STUCK_ALARM)
    steps = {q["id"]: q for q in stuck["metric_query"] if "metric" in q}
    assert {i: (metric_of(q), q["return_data"]) for i, q in steps.items()} == {
        step: ((NAMESPACE, metrics.STUCK_RECOVERIES.name, {"Step": step}, "Sum", 300), False)
        for step in ("reboot", "stop")
    }
    (total,) = [q for q in stuck["metric_query"] if "expression" in q]
    assert (total["expression"], total["return_data"], stuck["threshold"]) == (
        "FILL(reboot, 0) + FILL(stop, 0)",
        True,
        0,
    )
    assert set(metrics.STUCK_RECOVERIES.dimensions) == {"Step"}


def test_alarms_generic_grant_is_on_the_four_alarms(built: Built) -> None:
    expected = [(["cloudwatch:DisableAlarmActions"], built.alarms.arns)]
    assert_grant(built.stack, lambda role: built.alarms.grant(role, "cloudwatch:DisableAlarmActions"), expected)


def alarms_in(stack: TerraformStack, **props: Any) -> OperationsAlarms:
    topic = AlarmTopic(stack, "topic", name="ops-alarms", **WHERE)
    args = {"prefix": PREFIX, "queue_name": "tasks", "dlq_name": "tasks_dlq", "namespace": NAMESPACE, **props}
    return OperationsAlarms(stack, "alarms", topic=topic, **args)


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"prefix": ""}, f"prefix='' is not 1-{PREFIX_MAX} characters of A-Za-z0-9_.- (alarm names)"),
        ({"prefix": "gpu ops"}, f"prefix='gpu ops' is not 1-{PREFIX_MAX} characters of A-Za-z0-9_.- (alarm names)"),
        (
            {"prefix": "p" * (PREFIX_MAX + 1)},
            f"prefix='{'p' * (PREFIX_MAX + 1)}' is not 1-{PREFIX_MAX} characters of A-Za-z0-9_.- (alarm names)",
        ),
        ({"queue_name": "no spaces"}, "queue_name='no spaces' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)"),
        ({"dlq_name": "dlq.fifo"}, "dlq_name='dlq.fifo' is not 1-80 characters of A-Za-z0-9_- (SQS queue name)"),
        ({"namespace": "AWS/SQS"}, "namespace='AWS/SQS' starts with ':' or 'AWS/' (reserved: CloudWatch namespaces)"),
        ({"namespace": ":Gpu"}, "namespace=':Gpu' starts with ':' or 'AWS/' (reserved: CloudWatch namespaces)"),
        ({"namespace": 'Gpu"'}, "namespace='Gpu\"' is not 1-255 characters of 0-9A-Za-z._-/#: and space"),
        ({"oldest_message_age_s": 59}, "oldest_message_age_s=59 is outside 60..1209600 (SQS retention)"),
        ({"oldest_message_age_s": 1209601}, "oldest_message_age_s=1209601 is outside 60..1209600 (SQS retention)"),
        ({"period_seconds": 30}, "period_seconds=30 is not a multiple of 60 (the metrics are one-minute)"),
        ({"period_seconds": 0}, "period_seconds=0 is not a multiple of 60 (the metrics are one-minute)"),
        (
            {"evaluation_periods": 0},
            "evaluation_periods=0 is outside 1..288 (CloudWatch: period x evaluation periods <= 86400 s)",
        ),
        (
            {"evaluation_periods": 289},
            "evaluation_periods=289 is outside 1..288 (CloudWatch: period x evaluation periods <= 86400 s)",
        ),
        (
            {"period_seconds": 3600, "evaluation_periods": 169},
            "evaluation_periods=169 is outside 1..168 (CloudWatch: period x evaluation periods <= 604800 s)",
        ),
    ],
)
def test_alarms_refuse_what_cloudwatch_refuses(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: alarms_in(stack, **props)) == f"bad/alarms: {problem}"


def test_alarms_accept_the_limits_themselves() -> None:
    longest = alarms_in(
        fresh_stack("edges"), prefix="p" * PREFIX_MAX, oldest_message_age_s=1209600, evaluation_periods=288
    )
    assert max(len(name) for name in longest.alarms) == 255
    namespace = "Gpu/Orchestrator #1: test_x.y-z"
    weekly = alarms_in(
        fresh_stack("weekly"), namespace=namespace, oldest_message_age_s=60, period_seconds=3600, evaluation_periods=168
    )
    found = resources(synth(TerraformStack.of(weekly)), "aws_cloudwatch_metric_alarm")
    assert {(a["evaluation_periods"], a["metric_query"][0]["metric"]["period"]) for a in found} == {(168, 3600)}


# --- OperationsDashboard ---


def body_of(built: Built) -> dict[str, Any]:
    dashboard = one(built.doc, "aws_cloudwatch_dashboard")
    assert dashboard["dashboard_name"] == "gpu-orchestrator-ops"
    text = dashboard["dashboard_body"]
    assert text == json.dumps(json.loads(text), sort_keys=True), "the body is serialized with sorted keys"
    return dict(json.loads(text))


def graphs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["properties"]["title"]: w["properties"] for w in body["widgets"] if w["type"] == "metric"}


def plotted(body: dict[str, Any], namespace: str) -> set[str]:
    """The metric names graphed from `namespace`, line by line."""
    lines = [line for g in graphs(body).values() for line in g["metrics"]]
    return {line[1] for line in lines if isinstance(line[0], str) and line[0] == namespace}


def test_dashboard_graphs_our_metrics_by_their_core_names(built: Built) -> None:
    body = body_of(built)
    expected = {
        metrics.INSTANCES_UP,
        metrics.INSTANCE_STARTS,
        metrics.INSTANCE_STOPS,
        metrics.GPU_BUSY_MINUTES,
        metrics.GPU_IDLE_MINUTES,
        metrics.GPU_UTILIZATION,
        metrics.GPU_MEMORY_USED,
        metrics.TASKS_OVERDUE,
        metrics.STUCK_RECOVERIES,
    }
    assert plotted(body, NAMESPACE) == {m.name for m in expected} and plotted(body, NAMESPACE) <= OURS
    assert {g["region"] for g in graphs(body).values()} == {"us-east-1"}


def test_dashboard_searches_tasks_by_type_outcome_and_percentile(built: Built) -> None:
    searches = {
        title: g["metrics"][0][0]["expression"] for title, g in graphs(body_of(built)).items() if "expression" in str(g)
    }
    schema = f'"{NAMESPACE}"'
    assert searches == {
        "Tasks ended by type, outcome": f"SEARCH('{{{schema},Type,Outcome}} MetricName=\"TasksEnded\"', 'Sum', 300)",
        **{
            f"Time {what} (s), {p} by type": f"SEARCH('{{{schema},Type}} MetricName=\"{m.name}\"', '{p}', 300)"
            for what, m in (("queued", metrics.TIME_QUEUED), ("running", metrics.TIME_RUNNING))
            for p in ("p50", "p90")
        },
    }
    assert metrics.TASKS_ENDED.dimensions == ("Type", "Outcome") and metrics.TIME_QUEUED.dimensions == ("Type",)


def test_dashboard_queue_graphs_name_the_queue_by_reference(built: Built) -> None:
    g = graphs(body_of(built))
    queue = ref(built, built.queue.name)
    depth = [(line[1], line[3]) for line in g["Task queue (messages)"]["metrics"]]
    sqs = "ApproximateNumberOfMessages"
    assert depth == [
        (f"{sqs}Visible", queue),
        (f"{sqs}NotVisible", queue),
        (f"{sqs}Delayed", queue),
        (f"{sqs}Visible", "tasks_dlq"),
    ]
    # The only `${...}` in the body are those references: nothing of its own for Terraform to interpolate.
    text = one(built.doc, "aws_cloudwatch_dashboard")["dashboard_body"]
    assert set(re.findall(r"\$\{[^}]*\}", text)) == {queue, *(ref(built, arn) for arn in built.alarms.arns)}
    oldest = g["Oldest task (s)"]
    assert oldest["metrics"][0][:4] == ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", queue]
    assert oldest["annotations"] == {"horizontal": [{"label": "alarm", "value": 3600}]}


def test_dashboard_lists_the_alarms_and_graphs_the_group_only_in_fleet_mode(built: Built, plain: Built) -> None:
    body = body_of(built)
    (status,) = [w["properties"] for w in body["widgets"] if w["type"] == "alarm"]
    assert status["alarms"] == [ref(built, arn) for arn in built.alarms.arns]
    assert plotted(body, "AWS/AutoScaling") == {"GroupInServiceInstances", "GroupDesiredCapacity"}
    fleet = graphs(body)["GPU fleet (instances)"]["metrics"]
    assert {tuple(line[2:4]) for line in fleet if line[0] == "AWS/AutoScaling"} == {
        ("AutoScalingGroupName", "gpu-fleet-test")
    }
    assert plotted(body_of(plain), "AWS/AutoScaling") == set()


def test_dashboard_widgets_tile_the_grid_without_overlap(built: Built) -> None:
    rows: dict[int, list[dict[str, Any]]] = {}
    for widget in body_of(built)["widgets"]:
        rows.setdefault(widget["y"], []).append(widget)
    for row in rows.values():
        spans = sorted((w["x"], w["x"] + w["width"]) for w in row)
        assert spans[0][0] == 0 and spans[-1][1] == 24
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert len(body_of(built)["widgets"]) == 13


def dashboard_in(stack: TerraformStack, **props: Any) -> OperationsDashboard:
    args = {"name": "ops", "region": "us-east-1", **props}
    return OperationsDashboard(stack, "dash", alarms=alarms_in(stack), **args)


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"name": "ops dash"}, "name='ops dash' is not 1-255 characters of A-Za-z0-9-_ (DashboardName)"),
        ({"name": "d" * 256}, f"name='{'d' * 256}' is not 1-255 characters of A-Za-z0-9-_ (DashboardName)"),
        ({"group_name": ""}, "group_name='' is not 1-255 characters (Auto Scaling group name)"),
        ({"group_name": "g" * 256}, f"group_name='{'g' * 256}' is not 1-255 characters (Auto Scaling group name)"),
        ({"period_seconds": 10}, "period_seconds=10 is not a multiple of 60 (the metrics are one-minute)"),
    ],
)
def test_dashboard_refuses_what_cloudwatch_refuses(props: dict[str, Any], problem: str) -> None:
    assert refusal(lambda stack: dashboard_in(stack, **props)) == f"bad/dash: {problem}"


def test_dashboard_body_refuses_more_widgets_or_bytes_than_put_dashboard_takes() -> None:
    text = {"type": "text", "properties": {"markdown": "x"}}
    many = refusal(lambda stack: dashboard_body(Construct(stack, "dash"), [[text]] * 501))
    assert many == "bad/dash: dashboard_body='501 widgets' is over 500 widgets (PutDashboard)"
    big = {"type": "text", "properties": {"markdown": "x" * MAX_BODY_BYTES}}
    large = refusal(lambda stack: dashboard_body(Construct(stack, "dash"), [[big]]))
    assert re.fullmatch(r"bad/dash: dashboard_body='\d+ bytes' is over 1000000 bytes \(PutDashboard\)", large)
    assert json.loads(dashboard_body(Construct(fresh_stack("ok"), "dash"), [[text]] * 500))["widgets"][-1]["y"] == 998
