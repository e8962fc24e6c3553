"""Idle detection triggers for the shutdown Lambda: the CloudWatch alarm (fast path) and a schedule (backstop)."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.cloudwatch_event_rule import CloudwatchEventRule
from cdktf_cdktf_provider_aws.cloudwatch_event_target import CloudwatchEventTarget
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import (
    CloudwatchMetricAlarm,
    CloudwatchMetricAlarmMetricQuery,
    CloudwatchMetricAlarmMetricQueryMetric,
)
from constructs import Construct

from modules.function import PythonFunction

PERIOD_SECONDS = 300
ALARM_INVOKE_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"
EVENTS_INVOKE_PRINCIPAL = "events.amazonaws.com"
_DEPTH_METRICS = {
    "visible": "ApproximateNumberOfMessagesVisible",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


class QueueIdleAlarm(Construct):
    """ALARM when the queue held no message at all (visible + in flight + delayed) for the whole window.

    The seed watched visible messages only, so a running task (its message in flight) looked idle and was killed.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        queue_name: str,
        window_minutes: int,
        target: PythonFunction,
    ) -> None:
        super().__init__(scope, id)
        periods = window_minutes * 60 // PERIOD_SECONDS
        queries = [
            CloudwatchMetricAlarmMetricQuery(
                id=key,
                return_data=False,
                metric=CloudwatchMetricAlarmMetricQueryMetric(
                    namespace="AWS/SQS",
                    metric_name=metric,
                    dimensions={"QueueName": queue_name},
                    period=PERIOD_SECONDS,
                    stat="Maximum",
                ),
            )
            for key, metric in _DEPTH_METRICS.items()
        ]
        queries.append(
            CloudwatchMetricAlarmMetricQuery(
                id="messages",
                label="Messages in the queue (visible + in flight + delayed)",
                expression="visible + in_flight + delayed",
                return_data=True,
            )
        )
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
            metric_query=queries,
            # SQS stops publishing metrics for a queue idle for 6 hours, and a waking queue's metrics lag by up
            # to 15 minutes. Missing data is therefore evidence of idleness, not of work: "breaching" lets the alarm
            # fire where "missing" would leave it in INSUFFICIENT_DATA forever. Firing early on a lagging metric is
            # harmless because the Lambda reads the queue, the table and the instance itself before it acts.
            treat_missing_data="breaching",
            alarm_actions=[target.arn],
        )
        target.allow_invoke(self, "invoke-from-alarm", principal=ALARM_INVOKE_PRINCIPAL, source_arn=self.alarm.arn)

    @property
    def arn(self) -> str:
        return self.alarm.arn

    @property
    def name(self) -> str:
        return self.alarm.alarm_name


class Schedule(Construct):
    """Invoke the function on a fixed rate. Alarm actions run only on a state change, so an alarm that stays in
    ALARM through a short burst of work never fires again; this schedule bounds that miss to one period."""

    def __init__(self, scope: Construct, id: str, *, name: str, rate_minutes: int, target: PythonFunction) -> None:
        super().__init__(scope, id)
        unit = "minute" if rate_minutes == 1 else "minutes"
        self.rule = CloudwatchEventRule(
            self,
            "rule",
            name=name,
            schedule_expression=f"rate({rate_minutes} {unit})",
            description="Backstop for the idle alarm: re-evaluate the GPU's state on a fixed rate.",
        )
        CloudwatchEventTarget(self, "target", rule=self.rule.name, arn=target.arn, target_id="shutdown-lambda")
        target.allow_invoke(self, "invoke-from-schedule", principal=EVENTS_INVOKE_PRINCIPAL, source_arn=self.rule.arn)
