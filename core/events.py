"""The task state-change event: its one home (source, detail-type, the detail's fields, its id), and the webhook
delivery message that follows a terminal event of a task that named a `notify_url`.

functions/events turns each DynamoDB stream record of the task table (NEW_AND_OLD_IMAGES, low-level attribute
values: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_StreamRecord.html) into at most
one `TaskEvent` and publishes it to EventBridge (PutEvents entry:
https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEventsRequestEntry.html); functions/webhooks POSTs
the same detail to the task's webhook. docs/EVENTS.md is the consumers' description of what is declared here.

Stdlib plus boto3's TypeDeserializer (the stream's attribute values are the low-level ones).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .message import json_object
from .tasks import TaskRecord, TaskStatus, is_marker

EVENT_SOURCE = "gpu-orchestrator.tasks"
DETAIL_TYPE = "GPU Task State Change"
DETAIL_VERSION = 1  # the detail's schema version: a field is only ever added within one version
EVENT_ERROR_MAX_CHARS = 1024  # the task's error, as the event carries it (the item holds up to 4000 characters)
# The namespace of the deterministic event ids (uuid5): one fixed value, so the same change gives the same id forever.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, EVENT_SOURCE)


class BadStreamRecord(ValueError):
    """A stream record this function cannot read. str() is one line naming the record and the problem."""


def event_id(task_id: str, status: TaskStatus, attempts: int, updated_at: int | None) -> str:
    """The id of one state change: the same (task, status, attempt, write time) gives the same id, so a stream record
    delivered twice is published twice with one id, which consumers deduplicate on."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{task_id}|{status.value}|{attempts}|{updated_at}"))


def _seconds(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return max(0, end_ms - start_ms) / 1000.0


# The event's fields that are the task record's own, carried as the item holds them.
_AS_RECORDED = (
    "task_id", "type", "submitted_by", "attempts", "created_at", "updated_at", "started_at", "finished_at",
    "result_uri", "gpu_seconds", "cost_usd",
)  # fmt: skip


@dataclass(frozen=True)
class TaskEvent:
    """One task state change, as published. Times are epoch milliseconds, as the task item and the API give them.

    queued_seconds: submit -> the latest attempt's claim (a task that ended without running: submit -> its end);
    running_seconds: the latest attempt's claim -> the end. Both None while the task is QUEUED, running_seconds
    also while RUNNING. `notify`: whether the task named a webhook (never the URL: its query string may hold a
    token)."""

    event_id: str
    task_id: str
    status: TaskStatus
    previous_status: TaskStatus | None  # None: the task was just created (INSERT)
    type: str
    submitted_by: str | None
    attempts: int
    created_at: int
    updated_at: int | None
    started_at: int | None
    finished_at: int | None
    queued_seconds: float | None
    running_seconds: float | None
    result_uri: str | None
    error: str | None
    gpu_seconds: float | None
    cost_usd: float | None
    notify: bool

    @classmethod
    def of(cls, record: TaskRecord, previous_status: TaskStatus | None, *, known_id: str | None = None) -> TaskEvent:
        """The event of `record` having just reached its status; `known_id`: the id it was already announced with."""
        status = record.status
        queued = running = None
        if status is not TaskStatus.QUEUED:
            claimed = record.started_at
            if claimed is None and status.terminal:  # ended without running (cancelled or failed while queued)
                queued = _seconds(record.created_at, record.finished_at)
            else:
                queued = _seconds(record.created_at, claimed)
                running = _seconds(claimed, record.finished_at) if status.terminal else None
        return cls(
            event_id=known_id or event_id(record.task_id, status, record.attempts, record.updated_at),
            status=status,
            previous_status=previous_status,
            queued_seconds=queued,
            running_seconds=running,
            error=record.error[:EVENT_ERROR_MAX_CHARS] if record.error is not None else None,
            notify=record.notify_url is not None,
            **{name: getattr(record, name) for name in _AS_RECORDED},
        )

    @property
    def wants_webhook(self) -> bool:
        """A webhook is sent for the task's end only: the one terminal event of a task that named a URL."""
        return self.notify and self.status.terminal

    def detail(self) -> dict[str, Any]:
        """The event's detail (EventBridge) and the webhook's body: `id` is the event id, `version` the schema's."""
        fields = asdict(self)
        fields.pop("event_id")
        return {"id": self.event_id, "version": DETAIL_VERSION, **fields}

    def body(self) -> bytes:
        """The detail as the JSON bytes that are published and signed (str enums serialize as their values)."""
        return json.dumps(self.detail(), sort_keys=True, separators=(",", ":")).encode()

    def to_entry(self, bus_name: str) -> dict[str, Any]:
        """A PutEvents request entry for `bus_name`; its Time is the change's own write time."""
        entry: dict[str, Any] = {
            "Source": EVENT_SOURCE,
            "DetailType": DETAIL_TYPE,
            "Detail": self.body().decode(),
            "EventBusName": bus_name,
            "Resources": [],
        }
        if self.updated_at is not None:
            entry["Time"] = datetime.fromtimestamp(self.updated_at / 1000, UTC)
        return entry


def record_from_image(image: Mapping[str, Any]) -> TaskRecord:
    """A task item in low-level attribute values (a stream image, a GetItem Item) as a record."""
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    return TaskRecord.from_item({k: de.deserialize(v) for k, v in image.items()})


def _status_of(image: Mapping[str, Any] | None) -> TaskStatus | None:
    raw = (image or {}).get("status", {}).get("S")
    return TaskStatus(raw) if raw is not None else None


def from_stream_record(record: Mapping[str, Any]) -> TaskEvent | None:
    """The event one stream record announces, or None: idempotency markers, REMOVE (TTL expiry), and a MODIFY that
    left the status as it was (heartbeats, the webhook's own delivery-state writes) announce nothing. A record this
    cannot read raises BadStreamRecord."""
    data = record.get("dynamodb")
    name = record.get("eventName")
    where = f"stream record {record.get('eventID', '?')}"
    if not isinstance(data, Mapping) or name not in ("INSERT", "MODIFY", "REMOVE"):
        raise BadStreamRecord(f"{where}: not a DynamoDB stream record (eventName {name!r})")
    key = data.get("Keys", {}).get("task_id", {}).get("S")
    if not isinstance(key, str):
        raise BadStreamRecord(f"{where}: no task_id key")
    if name == "REMOVE" or is_marker(key):
        return None
    new = data.get("NewImage")
    if not isinstance(new, Mapping):
        raise BadStreamRecord(f"{where}: no NewImage (the table's StreamViewType must be NEW_AND_OLD_IMAGES)")
    try:
        previous = _status_of(data.get("OldImage")) if name == "MODIFY" else None
        task = record_from_image(new)
    except (KeyError, TypeError, ValueError) as err:
        raise BadStreamRecord(f"{where}: task {key} is not a task item ({type(err).__name__}: {err})") from None
    if name == "MODIFY" and previous is task.status:
        return None
    return TaskEvent.of(task, previous)


WEBHOOK_MESSAGE_VERSION = 1


@dataclass(frozen=True)
class WebhookMessage:
    """One delivery of a task's webhook, as the webhook queue carries it: which change (its event id, status and
    previous status, so the body is the event consumers already know) and which attempt. The function re-reads the
    task for everything else (the URL is never in a message either)."""

    event_id: str
    task_id: str
    status: TaskStatus
    previous_status: TaskStatus | None
    attempt: int = 1

    @classmethod
    def of(cls, event: TaskEvent) -> WebhookMessage:
        return cls(event.event_id, event.task_id, event.status, event.previous_status)

    def encode(self) -> str:
        doc = {"v": WEBHOOK_MESSAGE_VERSION, **asdict(self)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str) -> WebhookMessage:
        """The message in `body`, else ValueError in one line."""
        doc = json_object(body, "webhook message")
        if doc.get("v") != WEBHOOK_MESSAGE_VERSION:
            raise ValueError(f"webhook message is not version {WEBHOOK_MESSAGE_VERSION}")
        try:
            attempt = doc["attempt"]
            if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
                raise ValueError(f"attempt {attempt!r} is not a positive integer")
            if not all(isinstance(doc[k], str) and doc[k] for k in ("event_id", "task_id")):
                raise ValueError("event_id and task_id must be non-empty strings")
            previous = doc["previous_status"]
            return cls(
                event_id=doc["event_id"],
                task_id=doc["task_id"],
                status=TaskStatus(doc["status"]),
                previous_status=TaskStatus(previous) if previous is not None else None,
                attempt=attempt,
            )
        except KeyError as err:
            raise ValueError(f"webhook message has no {err.args[0]}") from None
        except ValueError as err:
            raise ValueError(f"webhook message: {err}") from None
