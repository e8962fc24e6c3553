"""The SQS side: the adapter's queue client, the DLQ path, and the sweep that settles tasks whose message SQS itself
moved. The message's shape is core.message's business alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core import logs
from core.message import MalformedMessage, TaskMessage
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord, TaskStatus, now_ms

log = logging.getLogger("adapter.queue")
SQS_MAX_VISIBILITY_S = 43200  # SQS caps a message's visibility timeout at 12 hours
SQS_MAX_RECEIVE = 10  # ReceiveMessage's MaxNumberOfMessages: 1..10


def receive_count(message: dict[str, Any]) -> int:
    return int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


class QueueClient:
    """The adapter's calls on the task queue and its DLQ (receipt handles in, nothing parsed)."""

    def __init__(self, sqs: Any, queue_url: str, dlq_url: str) -> None:
        self.sqs = sqs
        self.url = queue_url
        self.dlq_url = dlq_url

    def receive(self, wait_s: int, most: int = 1) -> list[dict[str, Any]]:
        """At most `most` messages (the free slots: a message received with no slot to run it would sit invisible,
        without a heartbeat, behind a long task), and never more than SQS hands out at once."""
        out = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(SQS_MAX_RECEIVE, most)),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return list(out.get("Messages", []))

    def send(self, message: TaskMessage) -> None:
        """A fresh message for a task the adapter hands back (a stop must not use up one of its receives)."""
        self.sqs.send_message(QueueUrl=self.url, MessageBody=message.encode())

    def delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def set_visibility(self, message: dict[str, Any], seconds: int) -> None:
        self.sqs.change_message_visibility(
            QueueUrl=self.url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=max(0, min(SQS_MAX_VISIBILITY_S, int(seconds))),
        )

    def to_dlq(self, message: dict[str, Any], reason: str) -> None:
        """Copy to the DLQ with why, then delete from the main queue. A crash in between leaves the message to
        come back here (and be moved again): the DLQ may hold a duplicate, nothing is lost."""
        attrs = {
            "reason": {"DataType": "String", "StringValue": reason[:1000] or "unknown"},
            "source_message_id": {"DataType": "String", "StringValue": message.get("MessageId", "unknown")},
            "receive_count": {"DataType": "Number", "StringValue": str(receive_count(message))},
        }
        self.sqs.send_message(QueueUrl=self.dlq_url, MessageBody=message["Body"], MessageAttributes=attrs)
        self.delete(message)
        logs.event(log, "moved_to_dlq", logging.WARNING, reason=reason, receive_count=receive_count(message))


def sweep_dlq(
    store: TaskStore,
    sqs: Any,
    dlq_url: str,
    *,
    stale_after_ms: int,
    hide_s: int,
    ended: Callable[[TaskRecord], None] | None = None,
) -> int:
    """Mark FAILED the tasks whose message sits in the DLQ but whose item was never settled - SQS moved the message
    itself because the worker holding the last attempt died. Messages stay in the DLQ (it keeps them for people);
    `hide_s` hides this batch so the next sweep sees others; `ended` is told of each task failed (its metrics).
    Returns how many tasks it failed."""
    out = sqs.receive_message(
        QueueUrl=dlq_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        VisibilityTimeout=hide_s,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )
    failed = 0
    for message in out.get("Messages", []):
        try:
            parsed = TaskMessage.parse(message["Body"])
        except MalformedMessage:
            continue
        task_id = parsed.task_id
        with logs.task_scope(task_id):
            item = store.get(task_id)
            if item is None or item.terminal:
                continue
            if not parsed.is_current_for(item):  # a stale or duplicate copy: the task's own message is elsewhere
                continue
            if item.status is TaskStatus.RUNNING and (item.heartbeat_at or 0) > now_ms() - stale_after_ms:
                continue  # someone is still heartbeating it
            last = item.error or "the worker holding the last attempt stopped heartbeating"
            try:
                record = store.fail_unclaimed(task_id, error=f"gave up: message moved to the DLQ; last error: {last}")
            except TransitionRejected:
                continue  # settled meanwhile
            if ended is not None:
                ended(record)
            failed += 1
            logs.event(log, "dlq_sweep_failed_task", logging.WARNING, previous_status=item.status.value)
    return failed
