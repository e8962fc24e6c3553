"""The webhook function's settings, read from its environment (names, defaults and meanings: core/contract.py
WEBHOOKS)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import contract as c
from core.contract import SettingError

LOGGER = "task-webhooks"  # the function's logger: one line per delivery, one per batch


@dataclass(frozen=True)
class WebhookSettings:
    queue_url: str
    secret_arn: str
    table_name: str
    max_attempts: int
    timeout_s: float
    allow_loopback: bool
    ca_file: str | None
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        max_attempts = c.WEBHOOK_MAX_ATTEMPTS.read(env)
        if max_attempts < 1:
            raise SettingError(c.WEBHOOK_MAX_ATTEMPTS.name, f"{max_attempts} is not valid: at least 1 delivery")
        timeout_s = c.WEBHOOK_TIMEOUT_SECONDS.read(env)
        if timeout_s <= 0:
            raise SettingError(c.WEBHOOK_TIMEOUT_SECONDS.name, f"{timeout_s} is not valid: must be above 0")
        return cls(
            queue_url=c.WEBHOOK_QUEUE_URL.read(env),
            secret_arn=c.WEBHOOK_SECRET_ARN.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            allow_loopback=c.WEBHOOK_ALLOW_LOOPBACK.read(env),
            ca_file=c.WEBHOOK_CA_FILE.read_optional(env),
            log_level=c.LOG_LEVEL.read(env),
        )
