"""`task-webhooks`: the webhook queue -> one signed POST per message. Handler: `webhooks.handler.handler`.

Triggered by the SQS event source mapping of WEBHOOK_QUEUE_URL with FunctionResponseTypes ReportBatchItemFailures
(https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html#services-sqs-batchfailurereporting):
the response names the messageId of each message not handled, Lambda deletes the others. A message that raised
(DynamoDB, SQS or Secrets Manager unreachable, a malformed body) is reported and comes back after the queue's
visibility timeout, and after its maxReceiveCount goes to the queue's dead-letter queue: nothing is lost. Messages
left when the invocation nears its timeout are reported too, unsent, so a slow receiver cannot make Lambda kill a
batch halfway. The work is functions/webhooks/deliver.py; this is the thin Lambda side.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from core import logs
from core.events import WebhookMessage

from .deliver import BACKOFF_BASE_S, Deps, deliver
from .post import tls_context
from .resolve import system_resolver
from .secret import SecretCache
from .settings import LOGGER, WebhookSettings

__all__ = ["Deps", "WebhookSettings", "deps_for", "handler", "run"]
log = logging.getLogger(LOGGER)
MARGIN_S = 5.0  # left of the invocation's time after the last delivery started (its log line, the response)


def records_of(event: Any) -> list[dict[str, Any]]:
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "messageId" in r for r in records):
        raise ValueError("event is not an SQS batch (no Records list of messages)")
    return records


def run(
    event: Any,
    *,
    settings: WebhookSettings,
    deps: Deps,
    backoff_base_s: float = BACKOFF_BASE_S,
    remaining_s: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Deliver each message of one SQS batch; returns the partial batch response."""
    failures: list[str] = []
    counts: Counter[str] = Counter()
    # A delivery can take a connect and a read of timeout_s each (besides DynamoDB and SQS). The first message is
    # always tried, so a function timeout shorter than that delays deliveries instead of stopping them all.
    needed_s = 2 * settings.timeout_s + MARGIN_S
    for n, record in enumerate(records_of(event)):
        if n and remaining_s is not None and remaining_s() < needed_s:
            failures.append(record["messageId"])
            counts["deferred"] += 1
            continue
        try:
            msg = WebhookMessage.parse(str(record.get("body", "")))
            with logs.task_scope(msg.task_id):
                counts[deliver(msg, settings=settings, deps=deps, backoff_base_s=backoff_base_s).value] += 1
        except Exception as err:  # one message's failure must not fail the batch's others
            failures.append(record["messageId"])
            counts["error"] += 1
            logs.event(log, "webhook_message_failed", logging.ERROR, message_id=record["messageId"], error=str(err))
    logs.event(log, "webhook_batch", messages=sum(counts.values()), outcomes=dict(sorted(counts.items())))
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}


def deps_for(settings: WebhookSettings, client: Callable[[str], Any]) -> Deps:
    """The production dependencies, from a client factory (service name -> boto3 client)."""
    return Deps(
        dynamodb=client("dynamodb"),
        sqs=client("sqs"),
        secret=SecretCache(client("secretsmanager"), settings.secret_arn),
        resolve=system_resolver,
        connect=socket.create_connection,
        tls=tls_context(settings.ca_file),
    )


@cache
def _client(service: str) -> Any:
    config = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10)
    return boto3.client(service, config=config)


@cache
def _deps(settings: WebhookSettings) -> Deps:
    """Made once per execution environment: the secret's cache and the TLS context live as long as it does."""
    return deps_for(settings, _client)


def handler(event: Any, context: Any) -> dict[str, Any]:
    settings = WebhookSettings.from_env(os.environ)
    logs.setup(settings.log_level, loggers=(log.name,))  # the runtime owns the root logger
    remaining = None
    if context is not None:
        remaining = lambda: context.get_remaining_time_in_millis() / 1000.0  # noqa: E731
    return run(event, settings=settings, deps=_deps(settings), remaining_s=remaining)
