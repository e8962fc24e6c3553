"""Configuration (environment variables, names from the contract) and the AWS clients the service uses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.model import STATUS_INDEX

from .gpu import RetryPolicy

DEFAULT_MAX_BODY_BYTES = 64 * 1024


class ConfigError(Exception):
    """The service cannot start with this configuration."""


def _split_ids(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    queue_url: str
    dlq_url: str
    table_name: str
    instance_ids: tuple[str, ...]
    token: str | None  # None only in insecure local mode
    insecure: bool = False
    status_index: str = STATUS_INDEX
    region: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    gpu_retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.instance_ids:
            raise ConfigError("GPU_INSTANCE_IDS names no instance")
        if self.token is None and not self.insecure:
            raise ConfigError(
                "ORCHESTRATOR_TOKEN is required (or start with --insecure-local / ORCHESTRATOR_INSECURE=1)"
            )
        if self.token is not None and not self.token.strip():
            raise ConfigError("ORCHESTRATOR_TOKEN is empty")
        if self.max_body_bytes < 1024:
            raise ConfigError("MAX_BODY_BYTES must be at least 1024")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, insecure: bool | None = None) -> Settings:
        env = os.environ if env is None else env
        required = ("TASK_QUEUE_URL", "TASK_DLQ_URL", "TASK_TABLE_NAME", "GPU_INSTANCE_IDS")
        missing = [k for k in required if not env.get(k)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        if insecure is None:
            insecure = env.get("ORCHESTRATOR_INSECURE", "") == "1"
        try:
            max_body = int(env.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
            deadline = float(env.get("GPU_START_DEADLINE_S", RetryPolicy.deadline_s))
        except ValueError as err:
            raise ConfigError(f"bad number in environment: {err}") from None
        return cls(
            queue_url=env["TASK_QUEUE_URL"],
            dlq_url=env["TASK_DLQ_URL"],
            table_name=env["TASK_TABLE_NAME"],
            instance_ids=_split_ids(env["GPU_INSTANCE_IDS"]),
            token=env.get("ORCHESTRATOR_TOKEN") or None,
            insecure=insecure,
            status_index=env.get("TASK_STATUS_INDEX") or STATUS_INDEX,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            max_body_bytes=max_body,
            gpu_retry=RetryPolicy(deadline_s=deadline),
        )


@dataclass(frozen=True)
class Clients:
    """boto3 objects the app uses; tests build them against moto, production from the default chain."""

    sqs: Any
    ec2: Any
    table: Any  # a DynamoDB Table resource (what adapter.model.TaskStore takes)

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> Clients:
        import boto3

        # AWS_ENDPOINT_URL (tests, local demo) is honoured by boto3 itself.
        session = session or boto3.session.Session(region_name=settings.region)
        return cls(
            sqs=session.client("sqs"),
            ec2=session.client("ec2"),
            table=session.resource("dynamodb").Table(settings.table_name),
        )
