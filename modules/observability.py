"""What tells a person something is wrong, and where they look: the alarm topic, the operations alarms and the
operations dashboard. Our own metrics are named by core.metrics, which the programs publish with, so a renamed metric
cannot leave an alarm or a graph watching nothing; the queue's are SQS's own (AWS/SQS, one-minute: SQS Developer
Guide, "Available CloudWatch metrics for Amazon SQS")."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cdktf_cdktf_provider_aws.cloudwatch_dashboard import CloudwatchDashboard
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import (
    CloudwatchMetricAlarm,
    CloudwatchMetricAlarmMetricQuery,
    CloudwatchMetricAlarmMetricQueryMetric,
)
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from cdktf_cdktf_provider_aws.sns_topic import SnsTopic
from cdktf_cdktf_provider_aws.sns_topic_policy import SnsTopicPolicy
from cdktf_cdktf_provider_aws.sns_topic_subscription import SnsTopicSubscription
from constructs import Construct

from core import metrics
from core.metrics import STUCK_STEPS, Metric
from modules.alarm import DAY_SECONDS, DEPTH_METRICS, WEEK_SECONDS
from modules.config import EMAIL
from modules.iam import ACCOUNT_ID, Role, Statement, arn, policy, render
from modules.props import QUEUE_NAME, QUEUE_NAME_RULE, check, check_actions, check_pattern, check_range, fail
from modules.resource import ResourceConstruct

# CreateTopic (SNS API Reference): a standard topic's name is 1-256 characters of A-Za-z0-9-_.
TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
ALARM_PRINCIPAL = {"Service": "cloudwatch.amazonaws.com"}
PUBLISH_ACTIONS, SUBSCRIBE_ACTIONS = ("sns:Publish",), ("sns:Subscribe",)
# What a publisher needs of an encrypted topic's key (SNS Developer Guide, "Configuring AWS KMS permissions").
KEY_USE_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey*")
KEY_DELETION_DAYS = 30  # ScheduleKeyDeletion: PendingWindowInDays 7..30; the longest, AWS's default
# The alarms by the suffix of their names (<prefix>-<suffix>, within PutMetricAlarm's 1-255 characters of AlarmName),
# with what each means (its AlarmDescription).
AGE_ALARM, DLQ_ALARM, OVERDUE_ALARM, STUCK_ALARM = "oldest-task-waiting", "dead-letters", "tasks-overdue", "stuck-hosts"
MEANINGS = {
    AGE_ALARM: "A task has waited in the queue over {threshold} s: no GPU started, or every slot stayed busy.",
    DLQ_ALARM: "A task message is in the dead-letter queue: its attempts ran out, or it could not be read.",
    OVERDUE_ALARM: "A RUNNING task is past its type's timeout_s (the controller counts them on every run).",
    STUCK_ALARM: "The controller rebooted or stopped a GPU host whose adapter was dead or hung.",
}
PREFIX_MAX = 255 - 1 - max(map(len, MEANINGS))
PREFIX = re.compile(rf"[A-Za-z0-9_.-]{{1,{PREFIX_MAX}}}")
AGE_METRIC = "ApproximateAgeOfOldestMessage"
# The Step values the controller publishes STUCK_RECOVERIES with: it rebooted the host, or (no help) stopped it.
# SQS MessageRetentionPeriod is 60..1209600 s (CreateQueue): no message gets older, so no threshold may be.
MIN_AGE_SECONDS, MAX_AGE_SECONDS = 60, 1209600
PERIOD_SECONDS = 300
# A custom namespace (CloudWatch User Guide, "Metrics concepts", Namespaces): 1-255 of 0-9A-Za-z._-/#: and space, not
# starting with ":" (PutMetricData's pattern) nor "AWS/" (AWS's own).
NAMESPACE = re.compile(r"[0-9A-Za-z._/#: -]{1,255}")
# PutDashboard: DashboardName is 1-255 characters of A-Za-z0-9-_; a body holds 0..500 widgets (Dashboard Body
# Structure and Syntax) on a grid 24 units wide, in at most 1 MB.
DASHBOARD_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_WIDGETS, MAX_BODY_BYTES = 500, 1_000_000
GRID_WIDTH, GRAPH_HEIGHT, TEXT_HEIGHT = 24, 6, 2
GROUP_METRICS = (("GroupInServiceInstances", "in service"), ("GroupDesiredCapacity", "desired"))  # AWS/AutoScaling
SLOT_METRICS = ((metrics.GPU_BUSY_MINUTES, "busy"), (metrics.GPU_IDLE_MINUTES, "idle"))
TIMINGS = (("queued", metrics.TIME_QUEUED), ("running", metrics.TIME_RUNNING))
FLEET_CHANGES = ((metrics.INSTANCE_STARTS, "starts"), (metrics.INSTANCE_STOPS, "stops"))
STUCK = metrics.STUCK_RECOVERIES.name


class AlarmTopic(ResourceConstruct):
    """An SNS topic the operations alarms notify, encrypted, with optional email subscribers.

    Its key is a customer managed KMS key of its own, not the AWS managed alias/aws/sns: that key's policy cannot be
    edited and does not let CloudWatch use it, so every notification of an alarm to a topic under it fails (AWS
    re:Post knowledge center, "cloudwatch-configure-alarm-sns"; SNS Developer Guide, "Key management": AWS services
    and encrypted topics). The key policy lets the account's IAM policies govern the key (KMS's default key policy)
    and this account's CloudWatch alarms use it; the topic policy lets the same alarms publish.

    Args:
        name: the topic's name: 1-256 characters of A-Za-z0-9-_ (CreateTopic). Required.
        region, account: where the alarms are: both policies admit cloudwatch.amazonaws.com only for
            arn:aws:cloudwatch:<region>:<account>:alarm:* (aws:SourceArn) of that 12-digit account
            (aws:SourceAccount). Required.
        emails: addresses subscribed with the email protocol; each receives nothing until it confirms the mail SNS
            sends it. Default (): no subscriber.

    Attributes: arn, name, key_arn, topic (the aws_sns_topic), key (the aws_kms_key), subscriptions.
    """

    SERVICE = "sns"

    def __init__(
        self, scope: Construct, id: str, *, name: str, region: str, account: str, emails: Sequence[str] = ()
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, TOPIC_NAME, "1-256 characters of A-Za-z0-9-_ (SNS topic name)")
        check_pattern(self, "account", account, ACCOUNT_ID, "a 12-digit AWS account id")
        for email in emails:
            check_pattern(self, "emails", email, EMAIL, "an email address (SNS email endpoint)")
        check(self, "emails", tuple(emails), len(set(emails)) == len(emails), "lists an address twice")
        alarms_only = {
            "StringEquals": {"aws:SourceAccount": account},
            "ArnLike": {"aws:SourceArn": arn("cloudwatch", "alarm:*", region=region, account=account)},
        }
        root = {"AWS": arn("iam", "root", region="", account=account)}
        key_policy = [
            Statement("kms:*", "*", sid="AccountIamPolicies", principal=root),
            Statement(KEY_USE_ACTIONS, "*", alarms_only, sid="CloudWatchAlarms", principal=ALARM_PRINCIPAL),
        ]
        self.key = KmsKey(
            self,
            "key",
            description=f"Encrypts the SNS topic {name} (CloudWatch alarm notifications)",
            enable_key_rotation=True,
            deletion_window_in_days=KEY_DELETION_DAYS,
            policy=render(policy(key_policy)),
        )
        self.key_arn = self.key.arn
        self.topic = SnsTopic(self, "topic", name=name, kms_master_key_id=self.key_arn)
        self.arn = self.topic.arn
        self.name = self.topic.name
        publish = Statement(PUBLISH_ACTIONS, self.arn, alarms_only, sid="CloudWatchAlarms", principal=ALARM_PRINCIPAL)
        SnsTopicPolicy(self, "policy", arn=self.arn, policy=render(policy([publish])))
        # Named by the address, not its place in the list: reordering the list replaces no subscription.
        self.subscriptions = [
            SnsTopicSubscription(self, f"email-{_digest(e)}", topic_arn=self.arn, protocol="email", endpoint=e)
            for e in emails
        ]

    def grant_publish(self, role: Role) -> list[Statement]:
        """Publish, with the use of the key every publisher to an encrypted topic needs."""
        return [*self.grant(role, *PUBLISH_ACTIONS), role.add(KEY_USE_ACTIONS, [self.key_arn])]

    def grant_subscribe(self, role: Role) -> list[Statement]:
        return self.grant(role, *SUBSCRIBE_ACTIONS)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class OperationsAlarms(Construct):
    """The alarms that need a person (MEANINGS), each notifying `topic` when it fires (alarm_actions) and when it
    clears (ok_actions). Missing data is notBreaching: each metric is absent when nothing happens (an idle queue, a
    controller run that found nothing), and nothing happening is not a fault.

    Args:
        prefix: names are <prefix>-<suffix>: 1-PREFIX_MAX characters of A-Za-z0-9_.-, so that every name fits
            PutMetricAlarm's 255. Required.
        queue_name, dlq_name: the task queue and its dead-letter queue (names or references): 1-80 characters of
            A-Za-z0-9_- (SQS quotas). Required.
        namespace: the programs' METRICS_NAMESPACE (core/contract.py): 1-255 characters of 0-9A-Za-z._-/#: and
            space, not starting with ":" or "AWS/" (CloudWatch namespaces). Required.
        topic: the AlarmTopic notified. Required.
        oldest_message_age_s: ALARM when the task queue's oldest message is older, 60..1209600 s (SQS's retention
            bounds every message's age). Default 3600: an hour is far past any GPU's start.
        period_seconds: the metrics' period, a multiple of 60. PutMetricAlarm also takes 10, 20 and 30, but only
            high-resolution metrics have data that often: on these one-minute metrics most such periods are empty
            and the alarm would flap between ALARM and OK. Default 300.
        evaluation_periods: periods that must breach, >= 1, with period x periods at most one day (seven days for a
            period of an hour or more: PutMetricAlarm). Default 1: each of these deserves a look at once.

    Attributes: alarms (name -> its aws_cloudwatch_metric_alarm), arns; queue_name, dlq_name, namespace and
    oldest_message_age_s, which the dashboard graphs.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        prefix: str,
        queue_name: str,
        dlq_name: str,
        namespace: str,
        topic: AlarmTopic,
        oldest_message_age_s: int = 3600,
        period_seconds: int = PERIOD_SECONDS,
        evaluation_periods: int = 1,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "prefix", prefix, PREFIX, f"1-{PREFIX_MAX} characters of A-Za-z0-9_.- (alarm names)")
        check_pattern(self, "queue_name", queue_name, QUEUE_NAME, QUEUE_NAME_RULE)
        check_pattern(self, "dlq_name", dlq_name, QUEUE_NAME, QUEUE_NAME_RULE)
        check_namespace(self, namespace)
        age_s, limit = oldest_message_age_s, "SQS retention"
        check_range(self, "oldest_message_age_s", age_s, MIN_AGE_SECONDS, MAX_AGE_SECONDS, limit)
        check_periods(self, period_seconds, evaluation_periods)
        self.prefix, self.topic, self.period, self.periods = prefix, topic, period_seconds, evaluation_periods
        self.queue_name, self.dlq_name, self.namespace = queue_name, dlq_name, namespace
        self.oldest_message_age_s = age_s
        thresholds = {AGE_ALARM: age_s, DLQ_ALARM: 0, OVERDUE_ALARM: 0, STUCK_ALARM: 0}
        queries = self._queries()
        self.alarms = {f"{prefix}-{k}": self._alarm(k, thresholds[k], queries[k]) for k in MEANINGS}

    def _queries(self) -> dict[str, list[CloudwatchMetricAlarmMetricQuery]]:
        """Each alarm's metric queries; the one returning data is the series it evaluates."""
        q, ours = self._query, self.namespace
        steps = [q(s, ours, STUCK, {"Step": s}, "Sum", False) for s in STUCK_STEPS]
        # FILL: a step with no data point in a period counts 0, so the other step alone still sums.
        total = " + ".join(f"FILL({s}, 0)" for s in STUCK_STEPS)
        return {
            AGE_ALARM: [q("m", "AWS/SQS", AGE_METRIC, {"QueueName": self.queue_name})],
            DLQ_ALARM: [q("m", "AWS/SQS", DEPTH_METRICS["visible"], {"QueueName": self.dlq_name})],
            OVERDUE_ALARM: [q("m", ours, metrics.TASKS_OVERDUE.name)],
            STUCK_ALARM: [*steps, CloudwatchMetricAlarmMetricQuery(id="stuck", expression=total, return_data=True)],
        }

    def _query(
        self,
        id: str,
        ns: str,
        name: str,
        dims: Mapping[str, str] | None = None,
        stat: str = "Maximum",
        out: bool = True,
    ) -> CloudwatchMetricAlarmMetricQuery:
        """One metric (`out`: the series the alarm evaluates)."""
        metric = CloudwatchMetricAlarmMetricQueryMetric(
            namespace=ns, metric_name=name, dimensions=dict(dims or {}) or None, period=self.period, stat=stat
        )
        return CloudwatchMetricAlarmMetricQuery(id=id, return_data=out, metric=metric)

    def _alarm(self, suffix: str, threshold: int, queries: list[Any]) -> CloudwatchMetricAlarm:
        return CloudwatchMetricAlarm(
            self,
            suffix,
            alarm_name=f"{self.prefix}-{suffix}",
            alarm_description=MEANINGS[suffix].format(threshold=threshold),
            comparison_operator="GreaterThanThreshold",
            threshold=threshold,
            evaluation_periods=self.periods,
            datapoints_to_alarm=self.periods,
            metric_query=queries,
            treat_missing_data="notBreaching",
            alarm_actions=[self.topic.arn],
            ok_actions=[self.topic.arn],
        )

    @property
    def arns(self) -> list[str]:
        return [a.arn for a in self.alarms.values()]

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (cloudwatch:*) on these alarms (`alarms.grant(role, "cloudwatch:DisableAlarmActions")`)."""
        return [grantee.add(check_actions(self, actions, "cloudwatch"), self.arns)]


def check_namespace(scope: Construct, namespace: str) -> None:
    check_pattern(scope, "namespace", namespace, NAMESPACE, "1-255 characters of 0-9A-Za-z._-/#: and space")
    custom = not namespace.startswith((":", "AWS/"))
    check(scope, "namespace", namespace, custom, "starts with ':' or 'AWS/' (reserved: CloudWatch namespaces)")


def check_periods(scope: Construct, period_seconds: int, evaluation_periods: int | None = None) -> None:
    """A period of whole minutes; with `evaluation_periods`, PutMetricAlarm's bound on period x periods."""
    whole = period_seconds > 0 and period_seconds % 60 == 0
    check(scope, "period_seconds", period_seconds, whole, "is not a multiple of 60 (the metrics are one-minute)")
    longest = DAY_SECONDS if period_seconds < 3600 else WEEK_SECONDS
    limit = f"CloudWatch: period x evaluation periods <= {longest} s"
    check_range(scope, "evaluation_periods", evaluation_periods, 1, longest // max(period_seconds, 60), limit)


class OperationsDashboard(Construct):
    """One CloudWatch dashboard of the whole system: the queue (depth, dead letters, oldest task), the GPU fleet, task
    outcomes by type, time queued and running (p50, p90), GPU slots busy vs idle, GPU utilization and memory, tasks
    overdue and stuck hosts recovered, and the operations alarms' state.

    The body is data serialized with sorted keys: the same props give the same JSON. Names and ARNs in it may be
    Terraform references (another stack's queue), which resolve inside the JSON string as in modules/iam.py's policy
    documents. It holds no `${` of its own, which Terraform would take for an interpolation: hence no dynamic labels,
    and the graphs by type are labelled with their dimensions, as SEARCH labels them.

    Args:
        name: DashboardName: 1-255 characters of A-Za-z0-9-_ (PutDashboard). Required.
        region: the metrics' region (every metric widget names one). Required.
        alarms: the OperationsAlarms shown; the graphs read its queue names, namespace and age threshold. Required.
        group_name: fleet mode's Auto Scaling group, 1-255 characters: its in-service and desired capacity are graphed
            too (AWS/AutoScaling publishes them only for a group with group metrics enabled). Default None: no group.
        period_seconds: the graphs' period, a multiple of 60 (the metrics are one-minute). Default 300.

    Attributes: arn, name, body (the JSON), dashboard (the aws_cloudwatch_dashboard).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        region: str,
        alarms: OperationsAlarms,
        group_name: str | None = None,
        period_seconds: int = PERIOD_SECONDS,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, DASHBOARD_NAME, "1-255 characters of A-Za-z0-9-_ (DashboardName)")
        sized = group_name is None or 1 <= len(group_name) <= 255
        check(self, "group_name", group_name, sized, "is not 1-255 characters (Auto Scaling group name)")
        check_periods(self, period_seconds)
        self.body = dashboard_body(self, _rows(name, region, period_seconds, alarms, group_name))
        self.dashboard = CloudwatchDashboard(self, "dashboard", dashboard_name=name, dashboard_body=self.body)
        self.arn, self.name = self.dashboard.dashboard_arn, self.dashboard.dashboard_name


def _rows(name: str, region: str, period: int, alarms: OperationsAlarms, group: str | None) -> list[list[Any]]:
    """The dashboard's widgets, row by row."""
    lines, ours = _lines(alarms, group), alarms.namespace

    def graph(title: str, series: list[Any], stat: str = "Maximum", **properties: Any) -> dict[str, Any]:
        shown = dict(title=title, metrics=series, region=region, period=period, stat=stat, view="timeSeries")
        return {"type": "metric", "properties": {**shown, "yAxis": {"left": {"min": 0}}, **properties}}

    def search(title: str, metric: Metric, stat: str) -> dict[str, Any]:
        """Every series of `metric`, one per combination of its dimensions' values."""
        schema = ",".join([f'"{ours}"', *metric.dimensions])
        expression = f"SEARCH('{{{schema}}} MetricName=\"{metric.name}\"', '{stat}', {period})"
        return graph(title, [[{"expression": expression, "id": "search"}]], stat)

    threshold = {"horizontal": [{"label": "alarm", "value": alarms.oldest_message_age_s}]}
    return [
        [_text(f"# {name}\nManaged by Terraform (modules/observability.py): edits made in the console are lost.")],
        [graph("Task queue (messages)", lines["queue"]), graph("Oldest task (s)", lines["age"], annotations=threshold)],
        [
            graph("GPU fleet (instances)", lines["fleet"]),
            search("Tasks ended by type, outcome", metrics.TASKS_ENDED, "Sum"),
        ],
        [search(f"Time {what} (s), {p} by type", m, p) for what, m in TIMINGS for p in ("p50", "p90")],
        [graph("GPU slot-minutes", lines["slots"], "Sum", stacked=True), graph("GPU use", lines["gpu"], "Average")],
        [graph("Tasks overdue, stuck GPU hosts recovered", lines["trouble"]), _alarm_status(alarms.arns)],
    ]


def _lines(alarms: OperationsAlarms, group: str | None) -> dict[str, list[Any]]:
    """The metrics of each graph but the SEARCH ones."""
    sqs, ours = "AWS/SQS", alarms.namespace
    queue, dlq = {"QueueName": alarms.queue_name}, {"QueueName": alarms.dlq_name}
    fleet = [_line(ours, metrics.INSTANCES_UP.name, label="instances up")]
    fleet += [_line(ours, m.name, stat="Sum", label=label) for m, label in FLEET_CHANGES]
    if group is not None:
        fleet += [_line("AWS/AutoScaling", m, {"AutoScalingGroupName": group}, label=lb) for m, lb in GROUP_METRICS]
    steps = [_line(ours, STUCK, {"Step": s}, stat="Sum", label=f"stuck host: {s}") for s in STUCK_STEPS]
    return {
        "queue": [
            *(_line(sqs, m, queue, label=key.replace("_", " ")) for key, m in DEPTH_METRICS.items()),
            _line(sqs, DEPTH_METRICS["visible"], dlq, label="dead letters"),
        ],
        "age": [_line(sqs, AGE_METRIC, queue, label="oldest message")],
        "fleet": fleet,
        "slots": [_line(ours, m.name, stat="Sum", label=label) for m, label in SLOT_METRICS],
        "gpu": [
            _line(ours, metrics.GPU_UTILIZATION.name, label="utilization (%)"),
            _line(ours, metrics.GPU_MEMORY_USED.name, label="memory used (MB)", yAxis="right"),
        ],
        "trouble": [_line(ours, metrics.TASKS_OVERDUE.name, label="tasks overdue"), *steps],
    }


def _line(namespace: str, name: str, dimensions: Mapping[str, str] | None = None, **options: Any) -> list[Any]:
    """One entry of a metric widget's `metrics`: namespace, name, dimension name/value pairs, then its options."""
    line: list[Any] = [namespace, name]
    for key, value in (dimensions or {}).items():
        line += [key, value]
    return [*line, options] if options else line


def _text(markdown: str) -> dict[str, Any]:
    return {"type": "text", "properties": {"markdown": markdown}}


def _alarm_status(arns: list[str]) -> dict[str, Any]:
    return {"type": "alarm", "properties": {"title": "Alarms", "alarms": arns, "sortBy": "stateUpdatedTimestamp"}}


def dashboard_body(scope: Construct, rows: Sequence[Sequence[dict[str, Any]]]) -> str:
    """The DashboardBody of these rows of widgets, each row splitting the grid evenly; refused past PutDashboard's
    MAX_WIDGETS widgets or MAX_BODY_BYTES."""
    widgets, y = [], 0
    for row in rows:
        width = GRID_WIDTH // len(row)
        height = TEXT_HEIGHT if all(w["type"] == "text" for w in row) else GRAPH_HEIGHT
        widgets += [{**w, "x": i * width, "y": y, "width": width, "height": height} for i, w in enumerate(row)]
        y += height
    if len(widgets) > MAX_WIDGETS:
        fail(scope, "dashboard_body", f"{len(widgets)} widgets", f"is over {MAX_WIDGETS} widgets (PutDashboard)")
    body = json.dumps({"widgets": widgets}, sort_keys=True)
    if len(body.encode()) > MAX_BODY_BYTES:
        fail(scope, "dashboard_body", f"{len(body.encode())} bytes", f"is over {MAX_BODY_BYTES} bytes (PutDashboard)")
    return body
