"""One webhook message: read the task, decide whether it still needs this delivery, POST, record the outcome.

At-least-once, as SQS delivers (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
standard-queues-at-least-once-delivery.html): a message may come twice, and the stream may announce one end
twice. So each delivery first re-reads the task (GetItem, consistent) and does nothing when its webhook is already
DELIVERED or FAILED, or when this attempt (or a later one) is already recorded; every outcome write is conditional
on the webhook still being PENDING below this attempt, so a late duplicate cannot overwrite a newer state.
Receivers deduplicate on the event id (the X-Gpuq-Event-Id header, the body's `id`) for what is left.

A retry is a new message, sent before the outcome is recorded, with DelaySeconds (at most 900 s, SQS's maximum:
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html), so a crash between
the two re-delivers rather than loses. The delivery-state writes leave `updated_at` alone: the event id is made
from it, and they announce no event (core/events.py).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from core import logs
from core.events import TaskEvent, WebhookMessage, record_from_image
from core.tasks import NotifyState, TaskRecord, now_ms
from core.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, Resolver, WebhookRefused, public_addresses, sign

from .post import Answer, Connect, Verdict, post
from .resolve import ResolveFailed
from .settings import LOGGER, WebhookSettings

BACKOFF_BASE_S = 30.0
"""Delay before the second delivery of a webhook; each further retry waits twice as long as the one before, up to
MAX_DELAY_S. With the default 8 attempts the last is tried about 45 minutes after the first."""
MAX_DELAY_S = 900  # SQS DelaySeconds' maximum
NOTIFY_ERROR_MAX_CHARS = 500
log = logging.getLogger(LOGGER)


class Outcome(StrEnum):
    """What handling one message came to (logged; counted per batch)."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # already DELIVERED/FAILED, or this attempt already recorded
    GONE = "gone"  # no such task any more (expired), or it names no webhook
    STALE = "stale"  # the task is no longer in the state the message announces
    SUPERSEDED = "superseded"  # another delivery recorded a newer state first


@dataclass(frozen=True)
class Deps:
    """What a delivery talks to: the low-level DynamoDB and SQS clients, the signing key, the resolver, the socket
    opener and the TLS trust (all injected, so the local AWS and tests run the same code)."""

    dynamodb: Any
    sqs: Any
    secret: Callable[[], bytes]
    resolve: Resolver
    connect: Connect
    tls: ssl.SSLContext


def retry_delay_s(attempt: int, base_s: float = BACKOFF_BASE_S) -> int:
    """DelaySeconds of the message that follows failed attempt `attempt` (1-based)."""
    return int(min(MAX_DELAY_S, base_s * 2 ** (attempt - 1)))


def _read(dynamodb: Any, table: str, task_id: str) -> TaskRecord | None:
    item = dynamodb.get_item(TableName=table, Key={"task_id": {"S": task_id}}, ConsistentRead=True).get("Item")
    return record_from_image(item) if item and "status" in item else None


def _record(dynamodb: Any, table: str, msg: WebhookMessage, state: NotifyState, error: str | None) -> Outcome | None:
    """Write the webhook's state after attempt `msg.attempt`; SUPERSEDED when a newer state is there already."""
    values: dict[str, Any] = {
        ":state": {"S": state.value},
        ":pending": {"S": NotifyState.PENDING.value},
        ":n": {"N": str(msg.attempt)},
        ":at": {"N": str(now_ms())},
    }
    update = "SET notify_state = :state, notify_attempts = :n, notified_at = :at"
    if error is None:
        update += " REMOVE notify_error"
    else:
        update += ", notify_error = :error"
        values[":error"] = {"S": error[:NOTIFY_ERROR_MAX_CHARS]}
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"task_id": {"S": msg.task_id}},
            UpdateExpression=update,
            ConditionExpression="attribute_exists(task_id) AND notify_state = :pending AND "
            "(attribute_not_exists(notify_attempts) OR notify_attempts < :n)",
            ExpressionAttributeValues=values,
        )
    except ClientError as err:
        if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        return Outcome.SUPERSEDED
    return None


def _skip(task: TaskRecord | None, msg: WebhookMessage) -> Outcome | None:
    if task is None or task.notify_url is None:
        return Outcome.GONE
    if task.notify_state in (NotifyState.DELIVERED, NotifyState.FAILED) or (task.notify_attempts or 0) >= msg.attempt:
        return Outcome.DUPLICATE
    if task.status is not msg.status:
        return Outcome.STALE
    return None


def _attempt(task: TaskRecord, msg: WebhookMessage, settings: WebhookSettings, deps: Deps) -> Answer:
    url = task.notify_url or ""
    try:
        addresses = public_addresses(url, allow_loopback=settings.allow_loopback, resolve=deps.resolve)
    except WebhookRefused as err:
        return Answer(Verdict.FAILED, f"refused: {err}")
    except ResolveFailed as err:
        return Answer(Verdict.RETRY, str(err))
    body = TaskEvent.of(task, msg.previous_status, known_id=msg.event_id).body()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(deps.secret(), body),
        EVENT_ID_HEADER: msg.event_id,
    }
    return post(
        url, body, headers, addresses=addresses, context=deps.tls, timeout_s=settings.timeout_s, connect=deps.connect
    )


def deliver(
    msg: WebhookMessage, *, settings: WebhookSettings, deps: Deps, backoff_base_s: float = BACKOFF_BASE_S
) -> Outcome:
    """Handle one delivery message: POST if still due, then DELIVERED, a delayed retry, or FAILED on the item."""
    task = _read(deps.dynamodb, settings.table_name, msg.task_id)
    skipped = _skip(task, msg)
    if skipped is not None or task is None:
        return skipped or Outcome.GONE
    started = time.monotonic()
    answer = _attempt(task, msg, settings, deps)
    logs.event(
        log,
        "webhook_attempt",
        attempt=msg.attempt,
        verdict=answer.verdict.value,
        reason=answer.reason,
        ms=round((time.monotonic() - started) * 1000),
    )
    if answer.verdict is Verdict.DELIVERED:
        return _record(deps.dynamodb, settings.table_name, msg, NotifyState.DELIVERED, None) or Outcome.DELIVERED
    if answer.verdict is Verdict.RETRY and msg.attempt < settings.max_attempts:
        following = WebhookMessage(msg.event_id, msg.task_id, msg.status, msg.previous_status, msg.attempt + 1)
        deps.sqs.send_message(
            QueueUrl=settings.queue_url,
            MessageBody=following.encode(),
            DelaySeconds=retry_delay_s(msg.attempt, backoff_base_s),
        )
        return _record(deps.dynamodb, settings.table_name, msg, NotifyState.PENDING, answer.reason) or Outcome.RETRYING
    reason = answer.reason if answer.verdict is Verdict.FAILED else f"{answer.reason} (after {msg.attempt} attempts)"
    return _record(deps.dynamodb, settings.table_name, msg, NotifyState.FAILED, reason) or Outcome.FAILED
