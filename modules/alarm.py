"""Idle detection triggers for the shutdown Lambda: the CloudWatch alarm (fast path) and a schedule (backstop)."""

from __future__ import annotations

import re

from cdktf_cdktf_provider_aws.cloudwatch_event_rule import CloudwatchEventRule
from cdktf_cdktf_provider_aws.cloudwatch_event_target import CloudwatchEventTarget
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import (
    CloudwatchMetricAlarm,
    CloudwatchMetricAlarmMetricQuery,
    CloudwatchMetricAlarmMetricQueryMetric,
)
from constructs import Construct

from modules.function import PythonFunction
from modules.props import QUEUE_NAME, QUEUE_NAME_RULE, check, check_pattern, check_range
from modules.resource import ResourceConstruct

PERIOD_SECONDS = 300
# PutMetricAlarm (CloudWatch API Reference): AlarmName 1-255 characters; Period 10, 20, 30 or a multiple of 60 s;
# Period x EvaluationPeriods at most one day (86400 s) for a period under an hour, seven days (604800 s) otherwise.
ALARM_NAME = re.compile(r".{1,255}")
HIGH_RESOLUTION_PERIODS = (10, 20, 30)
DAY_SECONDS, WEEK_SECONDS = 86400, 7 * 86400
# PutRule (EventBridge API Reference): Name 1-64 characters of .-_A-Za-z0-9; a rate expression's value is a positive
# whole number of minutes at least (EventBridge rate expressions reference: no schedule runs more often than once a
# minute).
RULE_NAME = re.compile(r"[.\-_A-Za-z0-9]{1,64}")
ALARM_INVOKE_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"
EVENTS_INVOKE_PRINCIPAL = "events.amazonaws.com"
DEPTH_METRICS = {
    "visible": "ApproximateNumberOfMessagesVisible",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


class QueueIdleAlarm(ResourceConstruct):
    """ALARM when the queue held no message at all (visible + in flight + delayed) for the whole window.

    The seed watched visible messages only, so a running task (its message in flight) looked idle and was killed.

    Args:
        name: AlarmName, 1-255 characters (PutMetricAlarm). Required.
        queue_name: the SQS queue watched (a name, or a reference to one). Required.
        window_minutes: how long the queue must be empty: a whole number of periods, at most one day while the
            period is under an hour (seven days otherwise). Required.
        target: the function the alarm invokes. Required.
        period_seconds: the metrics' period: 10, 20, 30 or a multiple of 60 (PutMetricAlarm Period). Default 300: the
            5 minutes environments set their idle windows in (modules/config.py).
    """

    SERVICE = "cloudwatch"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        queue_name: str,
        window_minutes: int,
        target: PythonFunction,
        period_seconds: int = PERIOD_SECONDS,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, ALARM_NAME, "1-255 characters (CloudWatch AlarmName)")
        check_pattern(self, "queue_name", queue_name, QUEUE_NAME, QUEUE_NAME_RULE)
        self._check_window(window_minutes, period_seconds)
        periods = window_minutes * 60 // period_seconds
        self.alarm = CloudwatchMetricAlarm(
            self,
            "alarm",
            alarm_name=name,
            alarm_description=(
                f"No task message visible, in flight or delayed for {window_minutes} minutes: "
                "invoke the shutdown Lambda, which checks the queue, table and instance directly "
                "before it stops anything."
            ),
            comparison_operator="LessThanOrEqualToThreshold",
            threshold=0,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            metric_query=_depth_queries(queue_name, period_seconds),
            # SQS stops publishing metrics for a queue idle for 6 hours, and a waking queue's metrics lag by up
            # to 15 minutes. Missing data is therefore evidence of idleness, not of work: "breaching" lets the alarm
            # fire where "missing" would leave it in INSUFFICIENT_DATA forever. Firing early on a lagging metric is
            # harmless because the Lambda reads the queue, the table and the instance itself before it acts.
            treat_missing_data="breaching",
            alarm_actions=[target.arn],
        )
        self.arn = self.alarm.arn
        self.name = self.alarm.alarm_name
        target.allow_invoke(self, "invoke-from-alarm", principal=ALARM_INVOKE_PRINCIPAL, source_arn=self.alarm.arn)

    def _check_window(self, window_minutes: int, period_seconds: int) -> None:
        standard = period_seconds in HIGH_RESOLUTION_PERIODS or (period_seconds > 0 and period_seconds % 60 == 0)
        check(self, "period_seconds", period_seconds, standard, "is not 10, 20, 30 or a multiple of 60 (CloudWatch)")
        longest = DAY_SECONDS if period_seconds < 3600 else WEEK_SECONDS
        limit = f"CloudWatch: period x evaluation periods <= {longest} s"
        check_range(self, "window_minutes", window_minutes, max(1, period_seconds // 60), longest // 60, limit)
        whole = window_minutes * 60 % period_seconds == 0
        check(self, "window_minutes", window_minutes, whole, f"is not a whole number of {period_seconds} s periods")


def _depth_queries(queue_name: str, period_seconds: int) -> list[CloudwatchMetricAlarmMetricQuery]:
    """The queue's three depth metrics (Maximum per period) and their sum, the one series the alarm evaluates."""
    queries = [
        CloudwatchMetricAlarmMetricQuery(
            id=key,
            return_data=False,
            metric=CloudwatchMetricAlarmMetricQueryMetric(
                namespace="AWS/SQS",
                metric_name=metric,
                dimensions={"QueueName": queue_name},
                period=period_seconds,
                stat="Maximum",
            ),
        )
        for key, metric in DEPTH_METRICS.items()
    ]
    queries.append(
        CloudwatchMetricAlarmMetricQuery(
            id="messages",
            label="Messages in the queue (visible + in flight + delayed)",
            expression="visible + in_flight + delayed",
            return_data=True,
        )
    )
    return queries


class Schedule(ResourceConstruct):
    """Invoke the function on a fixed rate. Alarm actions run only on a state change, so an alarm that stays in
    ALARM through a short burst of work never fires again; this schedule bounds that miss to one period.

    Args:
        name: the EventBridge rule's name: 1-64 characters of .-_A-Za-z0-9 (PutRule). Required.
        rate_minutes: minutes between invocations, >= 1 (EventBridge's finest rate). Required.
        target: the function invoked. Required.
    """

    SERVICE = "events"

    def __init__(self, scope: Construct, id: str, *, name: str, rate_minutes: int, target: PythonFunction) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, RULE_NAME, "1-64 characters of .-_A-Za-z0-9 (EventBridge rule name)")
        check_range(self, "rate_minutes", rate_minutes, 1, None, "EventBridge rate expression: whole minutes")
        unit = "minute" if rate_minutes == 1 else "minutes"
        self.rule = CloudwatchEventRule(
            self,
            "rule",
            name=name,
            schedule_expression=f"rate({rate_minutes} {unit})",
            description="Backstop for the idle alarm: re-evaluate the GPU's state on a fixed rate.",
        )
        self.arn = self.rule.arn
        CloudwatchEventTarget(self, "target", rule=self.rule.name, arn=target.arn, target_id="shutdown-lambda")
        target.allow_invoke(self, "invoke-from-schedule", principal=EVENTS_INVOKE_PRINCIPAL, source_arn=self.rule.arn)
