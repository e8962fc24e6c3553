"""The task-events function's settings, read from its environment (names, defaults and meanings: core/contract.py
EVENTS)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import contract as c
from core.setting_fields import read_fields, setting_field

LOGGER = "task-events"  # the function's logger: one JSON line per batch


@dataclass(frozen=True)
class EventsSettings:
    bus_name: str = setting_field(c.TASK_EVENT_BUS)  # a bus name or ARN, as PutEvents' EventBusName takes either
    webhook_queue_url: str = setting_field(c.WEBHOOK_QUEUE_URL)
    log_level: str = setting_field(c.LOG_LEVEL)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventsSettings:
        return read_fields(cls, env)
