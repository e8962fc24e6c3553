"""Configuration (environment variables, names from the contract) and the AWS clients the service uses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from core import contract as c
from core.contract import SettingError
from core.setting_fields import read_fields, setting_field

# An Event invoke returns once Lambda has queued the event; this bounds how long a submit can spend on it when Lambda
# is slow or unreachable (a failed nudge is only logged: the controller's schedule is the backstop).
NUDGE_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The service's settings. A `setting_field` is the contract setting of the same meaning, with its default
    (core/contract.py); the others are read in `from_env`, where this service reads a setting its own way."""

    queue_url: str = setting_field(c.TASK_QUEUE_URL)
    dlq_url: str = setting_field(c.TASK_DLQ_URL)
    table_name: str = setting_field(c.TASK_TABLE_NAME)
    instance_ids: tuple[str, ...] = setting_field(c.GPU_INSTANCE_IDS)
    token: str | None = setting_field(c.ORCHESTRATOR_TOKEN)  # None in insecure local mode and in IAM mode
    controller_function: str = setting_field(c.CONTROLLER_FUNCTION_NAME)  # nudged after each submit
    insecure: bool = False  # ORCHESTRATOR_INSECURE, or the CLI's --insecure-local
    status_index: str = setting_field(c.TASK_STATUS_INDEX)
    region: str | None = None  # AWS_REGION (Lambda's), else AWS_DEFAULT_REGION
    max_body_bytes: int = setting_field(c.MAX_BODY_BYTES)
    auth: str = setting_field(c.ORCHESTRATOR_AUTH)  # or "iam": behind a function URL with AWS_IAM auth (identity.py)
    admin_arns: tuple[str, ...] = setting_field(c.ORCHESTRATOR_ADMIN_ARNS)
    artifacts_bucket: str | None = None  # ARTIFACTS_BUCKET; None: the file endpoints answer 503, the rest works
    upload_max_bytes: int = setting_field(c.UPLOAD_MAX_BYTES)
    upload_url_expires_s: int = setting_field(c.UPLOAD_URL_EXPIRES_S)
    result_url_expires_s: int = setting_field(c.RESULT_URL_EXPIRES_S)
    log_tail_bytes: int = setting_field(c.LOG_TAIL_BYTES)
    fleet_name: str | None = setting_field(c.GPU_FLEET_NAME)  # fleet mode: /healthz lists the group's instances
    # HOSTS_TABLE_NAME: optional here though the contract requires it of the controller; without it only /cost's
    # idle overhead is missing, and the report says so.
    hosts_table: str | None = None
    gpu_hourly_usd: float | None = setting_field(c.GPU_HOURLY_USD)  # None: /cost prices nothing billed
    metrics_namespace: str = setting_field(c.METRICS_NAMESPACE)
    # Local environments only: a task's notify_url may name 127.0.0.1 / ::1.
    webhook_allow_loopback: bool = setting_field(c.WEBHOOK_ALLOW_LOOPBACK)

    def __post_init__(self) -> None:
        if self.fleet_name and self.instance_ids:
            raise SettingError(c.GPU_INSTANCE_IDS.name, f"not used with {c.GPU_FLEET_NAME.name}: unset one of them")
        if not self.instance_ids and not self.fleet_name:
            raise SettingError(c.GPU_INSTANCE_IDS.name, f"names no instance (and {c.GPU_FLEET_NAME.name} is unset)")
        self._check_limits()
        for entry in self.admin_arns:
            if not entry.startswith("arn:"):
                raise SettingError(c.ORCHESTRATOR_ADMIN_ARNS.name, f"{entry!r} is not an ARN or an ARN prefix")
        if self.auth == "iam":
            # Lambda checks the signature before the app runs; a token or an open mode beside it would only confuse
            # what protects the service.
            if self.token is not None:
                raise SettingError(c.ORCHESTRATOR_TOKEN.name, "not used with ORCHESTRATOR_AUTH=iam; unset it")
            if self.insecure:
                raise SettingError(c.ORCHESTRATOR_INSECURE.name, "not used with ORCHESTRATOR_AUTH=iam")
            return
        if self.token is None and not self.insecure:
            raise SettingError(
                c.ORCHESTRATOR_TOKEN.name, "required (or start with --insecure-local / ORCHESTRATOR_INSECURE=1)"
            )
        if self.token is not None and not self.token.strip():
            raise SettingError(c.ORCHESTRATOR_TOKEN.name, "is empty")

    def _check_limits(self) -> None:
        if self.max_body_bytes < 1024:
            raise SettingError(c.MAX_BODY_BYTES.name, "must be at least 1024")
        # S3 takes at most 5 GiB in one POST; SigV4 presigned URLs live at most 7 days.
        if not 1 <= self.upload_max_bytes <= 5 * 1024**3:
            raise SettingError(c.UPLOAD_MAX_BYTES.name, "must be 1 .. 5 GiB (S3's limit for one POST upload)")
        for spec, value in (
            (c.UPLOAD_URL_EXPIRES_S, self.upload_url_expires_s),
            (c.RESULT_URL_EXPIRES_S, self.result_url_expires_s),
        ):
            if not 1 <= value <= 7 * 24 * 3600:
                raise SettingError(spec.name, "must be 1 .. 604800 seconds (SigV4's longest presigned lifetime)")
        # Both logs go back in one response: a Lambda response holds at most 6 MB, and JSON may escape each byte.
        if not 1 <= self.log_tail_bytes <= 256 * 1024:
            raise SettingError(c.LOG_TAIL_BYTES.name, "must be 1 .. 262144")
        if self.gpu_hourly_usd is not None and self.gpu_hourly_usd < 0:
            raise SettingError(c.GPU_HOURLY_USD.name, "must not be negative")
        if not self.metrics_namespace.strip():
            raise SettingError(c.METRICS_NAMESPACE.name, "is empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, insecure: bool | None = None) -> Settings:
        env = os.environ if env is None else env
        return read_fields(
            cls,
            env,
            insecure=c.ORCHESTRATOR_INSECURE.read(env) if insecure is None else insecure,
            region=c.AWS_REGION.read_optional(env) or c.AWS_DEFAULT_REGION.read_optional(env),
            artifacts_bucket=c.ARTIFACTS_BUCKET.read_optional(env),
            hosts_table=c.HOSTS_TABLE_NAME.read_optional(env),
        )


@dataclass(frozen=True, kw_only=True)
class Clients:
    """boto3 objects the app uses; tests build them against moto (the Lambda client with localaws.lambdas'
    in-process asynchronous invoke), production from the default chain."""

    sqs: Any
    ec2: Any  # DescribeInstances for /healthz only: starting and stopping is the controller's
    lambda_: Any  # invokes the controller (CONTROLLER_FUNCTION_NAME) asynchronously after each submit
    table: Any  # a DynamoDB Table resource (what core.store.TaskStore takes)
    s3: Any = None  # presigns uploads and result downloads, reads logs; None: the file endpoints answer 503
    autoscaling: Any = None  # fleet mode: DescribeAutoScalingGroups for /healthz
    # A low-level DynamoDB client (core.hosts.HostStore's kind: the table resource's own client converts attribute
    # values, HostStore writes them typed) for the hosts table; None: /cost says it cannot read it.
    dynamodb: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> Clients:
        import boto3

        # AWS_ENDPOINT_URL (tests, local demo) is honoured by boto3 itself.
        session = session or boto3.session.Session(region_name=settings.region)
        return cls(
            sqs=session.client("sqs"),
            ec2=session.client("ec2"),
            lambda_=session.client("lambda", config=NUDGE_CONFIG),
            table=session.resource("dynamodb").Table(settings.table_name),
            # SigV4 for presigned URLs: what every region accepts (and all that the newer ones do).
            s3=session.client("s3", config=Config(signature_version="s3v4")),
            autoscaling=session.client("autoscaling") if settings.fleet_name else None,
            dynamodb=session.client("dynamodb") if settings.hosts_table else None,
        )
