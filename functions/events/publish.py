"""One batch of stream records -> PutEvents, then the webhook deliveries of the tasks that ended.

Checkpointing follows the DynamoDB stream event source mapping with ReportBatchItemFailures
(https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html): the response names the
SequenceNumber of the first record not fully handled, and Lambda retries the batch from that record on, so every
record before it is done for good and nothing after it needs publishing now. Records are therefore handled in
order and the first failure stops the batch.

PutEvents takes at most 10 entries a call and may accept some and refuse others (FailedEntryCount; each refused
entry has an ErrorCode): only InternalFailure and ThrottlingException are worth retrying
(https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEventsResultEntry.html), and only those
entries are sent again (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-putevents.html, "Handling
failures with PutEvents"), a bounded number of times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.events import BadStreamRecord, TaskEvent, WebhookMessage, from_stream_record

from .settings import EventsSettings

PUT_EVENTS_MAX_ENTRIES = 10  # PutEvents' limit of entries per request
SEND_BATCH_MAX_ENTRIES = 10  # SendMessageBatch's limit
PUT_ATTEMPTS = 3  # PutEvents calls per chunk: the first, then two for its retryable refused entries
RETRY_PAUSE_S = 0.1  # pause before the first retry of refused entries, doubled for each further one
RETRYABLE = frozenset({"InternalFailure", "ThrottlingException"})

Indexed = tuple[int, TaskEvent]  # an event and the position of its record in the batch


@dataclass(frozen=True)
class Outcome:
    """What one batch did. `failed_at`: the SequenceNumber Lambda resumes from (None: the whole batch is done)."""

    records: int
    published: int
    skipped: int  # records that announce nothing (markers, expiries, writes that kept the status)
    webhooks: int
    retried: int  # entries sent again after PutEvents refused them
    failed_at: str | None = None
    error: str | None = None

    def response(self) -> dict[str, Any]:
        """The partial batch response Lambda reads with ReportBatchItemFailures."""
        failures = [] if self.failed_at is None else [{"itemIdentifier": self.failed_at}]
        return {"batchItemFailures": failures}

    def to_log(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class _Put:
    failed: list[int]  # record positions whose event was not accepted
    retried: int
    error: str | None


def _put(client: Any, bus: str, chunk: list[Indexed], sleep: Callable[[float], None]) -> _Put:
    todo = list(chunk)
    retried, error = 0, None
    for attempt in range(PUT_ATTEMPTS):
        if attempt:
            sleep(RETRY_PAUSE_S * 2 ** (attempt - 1))
            retried += len(todo)
        try:
            out = client.put_events(Entries=[event.to_entry(bus) for _, event in todo])
        except (ClientError, BotoCoreError) as err:  # the whole request failed (botocore retried it already)
            error = f"PutEvents: {err}"
            continue
        results = list(out.get("Entries", []))
        results += [{"ErrorCode": "Missing", "ErrorMessage": "no result entry"}] * (len(todo) - len(results))
        refused = [(item, res) for item, res in zip(todo, results, strict=False) if res.get("ErrorCode")]
        if not refused:
            return _Put([], retried, None)
        codes = sorted({str(res["ErrorCode"]) for _, res in refused})
        error = f"PutEvents refused {len(refused)} of {len(todo)} entries ({', '.join(codes)})"
        todo = [item for item, _ in refused]
        if any(res["ErrorCode"] not in RETRYABLE for _, res in refused):
            break  # sending it again cannot help: Lambda's retries (and the mapping's on-failure destination) take it
    return _Put(sorted(i for i, _ in todo), retried, error)


def _queue_webhooks(client: Any, queue_url: str, due: list[Indexed]) -> tuple[list[int], str | None]:
    """Send one delivery message per event; the positions whose message was not sent, and why."""
    failed: list[int] = []
    error = None
    for start in range(0, len(due), SEND_BATCH_MAX_ENTRIES):
        part = due[start : start + SEND_BATCH_MAX_ENTRIES]
        entries = [{"Id": str(n), "MessageBody": WebhookMessage.of(ev).encode()} for n, (_, ev) in enumerate(part)]
        try:
            out = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as err:
            failed += [i for i, _ in part]
            error = f"SendMessageBatch: {err}"
            continue
        refused = out.get("Failed", [])
        if refused:
            failed += [part[int(f["Id"])][0] for f in refused]
            error = f"SendMessageBatch refused {len(refused)} messages ({refused[0].get('Code')})"
    return sorted(failed), error


def _read(records: Sequence[dict[str, Any]]) -> tuple[list[Indexed], int, int, str | None]:
    """The events of the records before the first unreadable one; that one's position (len: none) and why."""
    events: list[Indexed] = []
    skipped = 0
    for i, record in enumerate(records):
        try:
            event = from_stream_record(record)
        except BadStreamRecord as err:
            return events, skipped, i, str(err)
        if event is None:
            skipped += 1
        else:
            events.append((i, event))
    return events, skipped, len(records), None


def publish(
    records: Sequence[dict[str, Any]],
    *,
    events_client: Any,
    sqs_client: Any,
    settings: EventsSettings,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Publish the events of `records` (one DynamoDB stream batch, in order) and queue the webhooks they call for."""
    events, skipped, stop, error = _read(records)
    published = webhooks = retried = 0
    for start in range(0, len(events), PUT_EVENTS_MAX_ENTRIES):
        chunk = events[start : start + PUT_EVENTS_MAX_ENTRIES]
        put = _put(events_client, settings.bus_name, chunk, sleep)
        retried += put.retried
        published += len(chunk) - len(put.failed)
        cut = min(put.failed, default=len(records))
        # Only events before the cut: the ones after it are published again when Lambda retries from the cut, and
        # queue their webhook then (queued now as well, they would be delivered twice).
        due = [(i, ev) for i, ev in chunk if i < cut and ev.wants_webhook]
        unsent, send_error = _queue_webhooks(sqs_client, settings.webhook_queue_url, due)
        webhooks += len(due) - len(unsent)
        cut = min(cut, *unsent) if unsent else cut
        if cut < len(records):
            stop, error = min(stop, cut), (put.error if put.failed and cut == put.failed[0] else send_error)
            break
    failed_at = None
    if stop < len(records):
        failed_at = str(records[stop].get("dynamodb", {}).get("SequenceNumber") or "")
        if not failed_at:  # Lambda treats an empty itemIdentifier as a failure of the whole batch: say so plainly
            raise BadStreamRecord(f"record {stop} of the batch has no SequenceNumber: {error}")
    return Outcome(len(records), published, skipped, webhooks, retried, failed_at, error)
