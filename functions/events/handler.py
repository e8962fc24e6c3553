"""`task-events`: the task table's stream -> EventBridge. Handler: `events.handler.handler`.

Triggered by the DynamoDB stream event source mapping of the task table (StreamViewType NEW_AND_OLD_IMAGES,
FunctionResponseTypes ReportBatchItemFailures: https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html). Each
record becomes at most one event on TASK_EVENT_BUS (core/events.py), and the end of a task that named a webhook
one message on WEBHOOK_QUEUE_URL for functions/webhooks. The work is `publish` (functions/events/publish.py); this
is the thin Lambda side: settings, clients (made once per execution environment, reused across invocations), one
JSON log line per batch, the partial batch response.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from core import logs

from .publish import Outcome, publish
from .settings import LOGGER, EventsSettings

__all__ = ["EventsSettings", "handler", "run"]
log = logging.getLogger(LOGGER)


def records_of(event: Any) -> list[dict[str, Any]]:
    """The stream records of a Lambda event, else ValueError in one line (Lambda then retries the batch)."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("event is not a DynamoDB stream batch (no Records list)")
    return records


def run(
    event: Any,
    *,
    settings: EventsSettings,
    events_client: Any,
    sqs_client: Any,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Publish one batch and log it; returns the partial batch response."""
    records = records_of(event)
    outcome: Outcome = publish(
        records, events_client=events_client, sqs_client=sqs_client, settings=settings, sleep=sleep
    )
    level = logging.WARNING if outcome.failed_at is not None else logging.INFO
    logs.event(log, "task_events_published", level, **outcome.to_log())
    return outcome.response()


@cache
def _client(service: str) -> Any:
    config = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10)
    return boto3.client(service, config=config)


def handler(event: Any, context: Any) -> dict[str, Any]:
    settings = EventsSettings.from_env(os.environ)
    logs.setup(settings.log_level, loggers=(log.name,))  # the runtime owns the root logger
    return run(event, settings=settings, events_client=_client("events"), sqs_client=_client("sqs"))
