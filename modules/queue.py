"""The task queue: the main SQS queue with its dead-letter queue, and the grants that use them."""

from __future__ import annotations

import json

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
from cdktf_cdktf_provider_aws.sqs_queue_redrive_allow_policy import SqsQueueRedriveAllowPolicy
from constructs import Construct

from modules.iam import Role

SEND_ACTIONS = ("sqs:SendMessage", "sqs:GetQueueAttributes")
CONSUME_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes")
READ_DEPTH_ACTIONS = ("sqs:GetQueueAttributes",)
# The adapter's dead-letter path: a poison message or a last failed attempt is moved to the DLQ at once (send), and
# a sweep reads the DLQ (receive: it only hides messages, never deletes them) to fail tasks whose worker died on their
# last attempt. Sending to the DLQ is not sending tasks: nothing consumes the DLQ but people.
DEAD_LETTER_ACTIONS = ("sqs:SendMessage", "sqs:ReceiveMessage")

DAY = 24 * 3600


class TaskQueue(Construct):
    """`gpu_tasks_queue` + `gpu_tasks_queue_dlq`, both encrypted with SQS-managed keys.

    The DLQ is retained like the seed's RETAIN: `prevent_destroy` makes any plan that would delete it fail.
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
        self.max_receive_count = max_receive_count
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
            redrive_policy=json.dumps({"deadLetterTargetArn": self.dlq.arn, "maxReceiveCount": max_receive_count}),
        )
        # Only our queue may move messages into the DLQ (a separate resource: inline it would be a cycle).
        SqsQueueRedriveAllowPolicy(
            self,
            "dlq-allow",
            queue_url=self.dlq.url,
            redrive_allow_policy=json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [self.queue.arn]}),
        )

    @property
    def arn(self) -> str:
        return self.queue.arn

    @property
    def url(self) -> str:
        return self.queue.url

    @property
    def name(self) -> str:
        return self.queue.name

    @property
    def dlq_arn(self) -> str:
        return self.dlq.arn

    @property
    def dlq_url(self) -> str:
        return self.dlq.url

    def grant_send_messages(self, role: Role) -> None:
        role.add(SEND_ACTIONS, [self.arn])

    def grant_consume_messages(self, role: Role) -> None:
        role.add(CONSUME_ACTIONS, [self.arn])

    def grant_dead_letter_handling(self, role: Role) -> None:
        role.add(DEAD_LETTER_ACTIONS, [self.dlq_arn])

    def grant_read_depth(self, role: Role, *, include_dlq: bool = False) -> None:
        role.add(READ_DEPTH_ACTIONS, [self.arn, self.dlq_arn] if include_dlq else [self.arn])
