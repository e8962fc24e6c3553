"""The task-events function's settings, read from its environment (names, defaults and meanings: core/contract.py
EVENTS)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import contract as c

LOGGER = "task-events"  # the function's logger: one JSON line per batch


@dataclass(frozen=True)
class EventsSettings:
    bus_name: str  # TASK_EVENT_BUS: a bus name or ARN, as PutEvents' EventBusName takes either
    webhook_queue_url: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventsSettings:
        return cls(
            bus_name=c.TASK_EVENT_BUS.read(env),
            webhook_queue_url=c.WEBHOOK_QUEUE_URL.read(env),
            log_level=c.LOG_LEVEL.read(env),
        )
