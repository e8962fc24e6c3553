"""The SQS side: message parsing, the DLQ path, and the sweep that settles tasks whose message SQS itself moved.

Message body (written by the orchestrator): `{"task_id": "<ulid>", "type": "<name>"}`; only task_id is trusted, the
type is read from the task item.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import logs
from .model import TaskStatus, TaskStore, TransitionRejected, now_ms

log = logging.getLogger("adapter.queue")
MAX_TASK_ID = 64


class Poison(Exception):
    """A message no attempt could ever process: it goes to the DLQ at once, without burning retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_body(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        raise Poison("body is not valid JSON") from None
    task_id = doc.get("task_id") if isinstance(doc, dict) else None
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID or task_id.startswith("idem#"):
        raise Poison("body names no task_id")
    return task_id


def receive_count(message: dict[str, Any]) -> int:
    return int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


class TaskQueue:
    def __init__(self, sqs: Any, queue_url: str, dlq_url: str) -> None:
        self.sqs = sqs
        self.url = queue_url
        self.dlq_url = dlq_url

    def receive(self, wait_s: int) -> list[dict[str, Any]]:
        # One at a time: a second message received now would sit invisible, without a heartbeat, behind a long task.
        out = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return list(out.get("Messages", []))

    def delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def set_visibility(self, message: dict[str, Any], seconds: int) -> None:
        self.sqs.change_message_visibility(
            QueueUrl=self.url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=max(0, min(43200, int(seconds))),
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


def sweep_dlq(store: TaskStore, sqs: Any, dlq_url: str, *, stale_after_ms: int, hide_s: int) -> int:
    """Mark FAILED the tasks whose message sits in the DLQ but whose item was never settled - SQS moved the message
    itself because the worker holding the last attempt died. Messages stay in the DLQ (it keeps them for people);
    `hide_s` hides this batch so the next sweep sees others. Returns how many tasks it failed."""
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
            task_id = parse_body(message["Body"])
        except Poison:
            continue
        with logs.task_scope(task_id):
            item = store.get(task_id)
            if item is None or TaskStatus(item["status"]).terminal:
                continue
            if item["status"] == TaskStatus.RUNNING.value and item.get("heartbeat_at", 0) > now_ms() - stale_after_ms:
                continue  # someone is still heartbeating it
            last = item.get("error") or "the worker holding the last attempt stopped heartbeating"
            try:
                store.fail_unclaimed(task_id, error=f"gave up: message moved to the DLQ; last error: {last}")
            except TransitionRejected:
                continue  # settled meanwhile
            failed += 1
            logs.event(log, "dlq_sweep_failed_task", logging.WARNING, previous_status=item["status"])
    return failed
