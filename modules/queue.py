"""The task queue: the main SQS queue with its dead-letter queue, and the grants that use them."""

from __future__ import annotations

from typing import Literal

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
from cdktf_cdktf_provider_aws.sqs_queue_redrive_allow_policy import SqsQueueRedriveAllowPolicy
from constructs import Construct

from modules.iam import Role, Statement, render
from modules.props import QUEUE_NAME, QUEUE_NAME_RULE, check_actions, check_pattern, check_range

SEND_ACTIONS = ("sqs:SendMessage", "sqs:GetQueueAttributes")
SEND_MESSAGE_ACTIONS = ("sqs:SendMessage",)  # a fresh message alone (a requeue, a delayed retry): no depth read
CONSUME_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes")
READ_DEPTH_ACTIONS = ("sqs:GetQueueAttributes",)
# The adapter's dead-letter path: a poison message or a last failed attempt is moved to the DLQ at once (send), and
# a sweep reads the DLQ (receive: it only hides messages, never deletes them) to fail tasks whose worker died on their
# last attempt. Sending to the DLQ is not sending tasks: nothing consumes the DLQ but people.
DEAD_LETTER_ACTIONS = ("sqs:SendMessage", "sqs:ReceiveMessage")

DAY = 24 * 3600
# CreateQueue's attributes (SQS API Reference): VisibilityTimeout 0..43200 s (default 30); ReceiveMessageWaitTimeSeconds
# 0..20 (default 0); MessageRetentionPeriod 60..1209600 s (default 345600, 4 days); a redrive policy's
# maxReceiveCount 1..1000. Queue names: modules/props.py.
MAX_VISIBILITY_SECONDS = 12 * 3600
MAX_WAIT_SECONDS = 20
MIN_RETENTION_SECONDS, MAX_RETENTION_SECONDS = 60, 14 * DAY
MAX_RECEIVE_COUNT = 1000


class TaskQueue(Construct):
    """`gpu_tasks_queue` + `gpu_tasks_queue_dlq`, both encrypted with SQS-managed keys.

    The DLQ is retained like the seed's RETAIN: `prevent_destroy` makes any plan that would delete it fail.

    Args:
        name: the task queue's name: 1-80 characters of A-Za-z0-9_- (SQS quotas). Required.
        dlq_name: the dead-letter queue's name, same rule. Required.
        visibility_timeout_seconds: how long a received message stays hidden, 0..43200 (AWS default 30). Default
            300: the adapter extends it while a task runs, so this only bounds how soon a dead worker's task returns.
        receive_wait_seconds: long-poll wait, 0..20 (AWS default 0, short polling). Default 20: the fewest empty
            receives.
        retention_seconds: how long a task waits before SQS drops it, 60..1209600 (AWS default 345600). Default
            1 day.
        dlq_retention_seconds: the same for dead letters, 60..1209600. Default 14 days, the most SQS keeps.
        max_receive_count: receives before SQS moves a message to the DLQ, 1..1000. Default 3.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        dlq_name: str,
        visibility_timeout_seconds: int = 300,
        receive_wait_seconds: int = 20,
        retention_seconds: int = DAY,
        dlq_retention_seconds: int = 14 * DAY,
        max_receive_count: int = 3,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, QUEUE_NAME, QUEUE_NAME_RULE)
        check_pattern(self, "dlq_name", dlq_name, QUEUE_NAME, QUEUE_NAME_RULE)
        self._check_durations(
            visibility_timeout_seconds, receive_wait_seconds, retention_seconds, dlq_retention_seconds
        )
        check_range(self, "max_receive_count", max_receive_count, 1, MAX_RECEIVE_COUNT, "SQS redrive maxReceiveCount")
        self.dlq = SqsQueue(
            self,
            "dlq",
            name=dlq_name,
            message_retention_seconds=dlq_retention_seconds,
            sqs_managed_sse_enabled=True,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True),
        )
        self.queue = SqsQueue(
            self,
            "queue",
            name=name,
            visibility_timeout_seconds=visibility_timeout_seconds,
            receive_wait_time_seconds=receive_wait_seconds,
            message_retention_seconds=retention_seconds,
            sqs_managed_sse_enabled=True,
            redrive_policy=render({"deadLetterTargetArn": self.dlq.arn, "maxReceiveCount": max_receive_count}),
        )
        # Only our queue may move messages into the DLQ (a separate resource: inline it would be a cycle).
        SqsQueueRedriveAllowPolicy(
            self,
            "dlq-allow",
            queue_url=self.dlq.url,
            redrive_allow_policy=render({"redrivePermission": "byQueue", "sourceQueueArns": [self.queue.arn]}),
        )
        self.arn, self.url, self.name = self.queue.arn, self.queue.url, self.queue.name
        self.dlq_arn, self.dlq_url, self.dlq_name = self.dlq.arn, self.dlq.url, self.dlq.name

    def _check_durations(self, visibility: int, wait: int, retention: int, dlq_retention: int) -> None:
        check_range(self, "visibility_timeout_seconds", visibility, 0, MAX_VISIBILITY_SECONDS, "SQS VisibilityTimeout")
        check_range(self, "receive_wait_seconds", wait, 0, MAX_WAIT_SECONDS, "SQS ReceiveMessageWaitTime")
        for prop, seconds in (("retention_seconds", retention), ("dlq_retention_seconds", dlq_retention)):
            check_range(self, prop, seconds, MIN_RETENTION_SECONDS, MAX_RETENTION_SECONDS, "SQS MessageRetentionPeriod")

    def grant(self, grantee: Role, *actions: str, on: Literal["queue", "dlq", "both"] = "queue") -> list[Statement]:
        """`actions` (sqs:*) on the task queue, the dead-letter queue, or both in one statement."""
        arns = {"queue": [self.arn], "dlq": [self.dlq_arn], "both": [self.arn, self.dlq_arn]}[on]
        return [grantee.add(check_actions(self, actions, "sqs"), arns)]

    def grant_send_messages(self, role: Role) -> list[Statement]:
        return self.grant(role, *SEND_ACTIONS)

    def grant_consume_messages(self, role: Role) -> list[Statement]:
        return self.grant(role, *CONSUME_ACTIONS)

    def grant_dead_letter_handling(self, role: Role) -> list[Statement]:
        return self.grant(role, *DEAD_LETTER_ACTIONS, on="dlq")

    def grant_read_depth(self, role: Role, *, include_dlq: bool = False) -> list[Statement]:
        return self.grant(role, *READ_DEPTH_ACTIONS, on="both" if include_dlq else "queue")
