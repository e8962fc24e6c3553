"""The task queue's message: the only place that knows its shape.

Body (version 1): `{"v": 1, "task_id": "<ulid>", "enqueue_id": "<hex>"}`. The message only says *which* task to
look at and which sending of it this is (the item records its current `enqueue_id`: a copy with another one is stale
and is deleted unrun; the DLQ sweep fails a task only for its current message). The type, the
params and whether the task may run at all are read from its item, which is the one authority (the queue is not a
trust boundary: anything with sqs:SendMessage could write a message). A body without `v` is version 0, as written
before the version field existed (`{"task_id", "type"}`): it parses the same way, so a rollout never strands
messages already queued.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .tasks import TaskRecord, is_marker

VERSION = 1
MAX_TASK_ID = 64


class MalformedMessage(ValueError):
    """A body no attempt could ever process: it goes to the dead-letter queue at once, without burning retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_object(body: str, what: str, error: Callable[[str], ValueError] = ValueError) -> dict[str, Any]:
    """`body` parsed as a JSON object, else `error` saying that `what` is not valid JSON or not a JSON object."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise error(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class TaskMessage:
    task_id: str
    enqueue_id: str | None = None  # None: a version-0 body, sent before messages had an identity
    version: int = VERSION

    def encode(self) -> str:
        doc = {"v": VERSION, "task_id": self.task_id, "enqueue_id": self.enqueue_id}
        return json.dumps({k: v for k, v in doc.items() if v is not None}, separators=(",", ":"))

    def is_current_for(self, task: TaskRecord) -> bool:
        """Whether this message is the task's current one. Without an id on either side (older senders) it cannot
        be told apart, and counts as current."""
        return self.enqueue_id is None or task.enqueue_id is None or self.enqueue_id == task.enqueue_id

    @classmethod
    def parse(cls, body: str) -> TaskMessage:
        doc = json_object(body, "body", MalformedMessage)
        version = doc.get("v", 0)
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= VERSION:
            raise MalformedMessage(f"unknown message version {version!r} (this adapter reads 0..{VERSION})")
        task_id = doc.get("task_id")
        if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID or is_marker(task_id):
            raise MalformedMessage("body names no task_id")
        enqueue_id = doc.get("enqueue_id")
        if enqueue_id is not None and (not isinstance(enqueue_id, str) or not 0 < len(enqueue_id) <= MAX_TASK_ID):
            raise MalformedMessage("enqueue_id is not a short string")
        return cls(task_id, enqueue_id, version)
