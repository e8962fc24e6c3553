"""Configuration (environment variables, names from the contract) and the AWS clients the service uses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import contract as c
from core.contract import SettingError
from core.tasks import STATUS_INDEX

from .gpu import StartRetry


@dataclass(frozen=True)
class Settings:
    """The service's settings; each is the contract setting of the same meaning (core/contract.py)."""

    queue_url: str
    dlq_url: str
    table_name: str
    instance_ids: tuple[str, ...]
    token: str | None  # None only in insecure local mode
    insecure: bool = False
    status_index: str = STATUS_INDEX
    region: str | None = None
    max_body_bytes: int = c.MAX_BODY_BYTES.default or 0
    gpu_retry: StartRetry = field(default_factory=StartRetry)

    def __post_init__(self) -> None:
        if not self.instance_ids:
            raise SettingError(c.GPU_INSTANCE_IDS.name, "names no instance")
        if self.token is None and not self.insecure:
            raise SettingError(
                c.ORCHESTRATOR_TOKEN.name, "required (or start with --insecure-local / ORCHESTRATOR_INSECURE=1)"
            )
        if self.token is not None and not self.token.strip():
            raise SettingError(c.ORCHESTRATOR_TOKEN.name, "is empty")
        if self.max_body_bytes < 1024:
            raise SettingError(c.MAX_BODY_BYTES.name, "must be at least 1024")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, insecure: bool | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            queue_url=c.TASK_QUEUE_URL.read(env),
            dlq_url=c.TASK_DLQ_URL.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            instance_ids=c.GPU_INSTANCE_IDS.read(env),
            token=c.ORCHESTRATOR_TOKEN.read_optional(env),
            insecure=c.ORCHESTRATOR_INSECURE.read(env) if insecure is None else insecure,
            status_index=c.TASK_STATUS_INDEX.read(env),
            region=c.AWS_REGION.read_optional(env) or c.AWS_DEFAULT_REGION.read_optional(env),
            max_body_bytes=c.MAX_BODY_BYTES.read(env),
            gpu_retry=StartRetry(deadline_s=c.GPU_START_DEADLINE_S.read(env)),
        )


@dataclass(frozen=True)
class Clients:
    """boto3 objects the app uses; tests build them against moto, production from the default chain."""

    sqs: Any
    ec2: Any
    table: Any  # a DynamoDB Table resource (what core.store.TaskStore takes)

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
