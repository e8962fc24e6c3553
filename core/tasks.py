"""The task: its states, its item in `task_store` as a typed record, its id, and the idempotency-marker rule.

Stdlib only (Decimal aside, which DynamoDB's resource layer hands out): every program reads tasks through
`TaskRecord`, never through raw item dicts.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

STATUS_INDEX = "status-created_at-index"
"""The table's GSI (hash `status`, range `created_at`): how every program lists tasks of one state."""
RESULT_TTL_SECONDS = 30 * 24 * 3600
"""Items expire a month after they end (DynamoDB TTL on `ttl`)."""
MARKER_PREFIX = "idem#"
"""Items whose key starts with this are idempotency markers, never tasks."""


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class NotifyState(StrEnum):
    """Where the webhook of a task that named one (`notify_url`) stands: PENDING until its terminal state's delivery
    got a 2xx answer (DELIVERED) or ran out of attempts (FAILED)."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


def marker_key(idempotency_key: str) -> str:
    """The key of the item that reserves an idempotency key for one task."""
    return f"{MARKER_PREFIX}{idempotency_key}"


def is_marker(task_id: str) -> bool:
    return task_id.startswith(MARKER_PREFIX)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_task_id(at_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, so ids sort by creation time."""
    ms = now_ms() if at_ms is None else at_ms
    value = (ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_enqueue_id() -> str:
    """The identity of one sending of a task's message: a message whose id is not the item's current one is a
    stale or duplicate copy."""
    return secrets.token_hex(8)


def now_ms() -> int:
    return int(time.time() * 1000)


def from_dynamo(value: Any) -> Any:
    """DynamoDB hands numbers out as Decimal: give callers ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


def to_dynamo(value: Any) -> Any:
    """boto3's resource layer refuses floats: store them as Decimal."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_dynamo(v) for v in value]
    return value


@dataclass(frozen=True)
class TaskRecord:
    """One task item. Times are epoch milliseconds; None means the attribute is absent from the item."""

    task_id: str
    status: TaskStatus
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int | None = None
    attempts: int = 0
    enqueued_at: int | None = None
    enqueue_id: str | None = None  # the identity of the task's current queue message (core.message)
    enqueue_claimed_at: int | None = None  # when a sender took the right to send that message
    started_at: int | None = None
    heartbeat_at: int | None = None
    finished_at: int | None = None
    worker: str | None = None
    result_uri: str | None = None
    error: str | None = None
    idempotency_key: str | None = None
    submitted_by: str | None = None  # the caller's identity (an IAM ARN, or "local" in bearer mode); None: unknown
    cancel_requested: bool = False
    completed_attempt: int | None = None  # the attempt whose outputs were uploaded in full (completion marker)
    ttl: int | None = None
    notify_url: str | None = None  # the https webhook the submitter named: told when the task ends (core.webhook)
    notify_state: NotifyState | None = None
    notify_attempts: int | None = None  # deliveries tried so far
    notify_error: str | None = None  # why the last delivery failed
    notified_at: int | None = None  # when the delivery state last changed
    gpu_seconds: float | None = None  # GPU time the task's settled attempts used (one GPU each)
    cost_usd: float | None = None  # gpu_seconds at the environment's price per GPU-second (GPU_HOURLY_USD / slots)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> TaskRecord:
        """From a DynamoDB item (resource-layer types: Decimal numbers). Attributes it does not know are dropped."""
        plain = from_dynamo(dict(item))
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in plain.items() if k in known}
        values["status"] = TaskStatus(values["status"])
        if values.get("notify_state") is not None:
            values["notify_state"] = NotifyState(values["notify_state"])
        values["cancel_requested"] = bool(values.get("cancel_requested", False))
        return cls(**values)

    def to_item(self) -> dict[str, Any]:
        """The DynamoDB item: absent attributes stay absent (a sparse item, as the conditional writes expect)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "cancel_requested" and not value):
                continue
            out[f.name] = value.value if isinstance(value, StrEnum) else value
        out["params"] = dict(self.params)
        return out

    def evolve(self, **changes: Any) -> TaskRecord:
        return replace(self, **changes)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True)
class Page:
    items: list[TaskRecord]
    cursor: dict[str, Any] | None  # LastEvaluatedKey, or None on the last page
