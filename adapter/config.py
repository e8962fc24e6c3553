"""The adapter's configuration, read from the runtime contract (core/contract.py: names, types, defaults, meanings).

On the instance the env comes from systemd (the env file install.sh writes from the SSM config parameter). The
queue's own VisibilityTimeout and RedrivePolicy are read once at start, so the adapter and the queue cannot disagree
about when a message comes back or when SQS gives up on it; VISIBILITY_TIMEOUT and MAX_RECEIVES may override them
for tests. The number of slots is GPU_SLOTS, else what the host's GPUs say (adapter/slots.py `gpu_count`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core import contract as c
from core.setting_fields import read_fields, setting_field

from .slots import gpu_count


@dataclass(frozen=True)
class RetryBackoff:
    """When a failed attempt is retried and how long the message waits before it is visible again.

    `max_receives` is the queue's maxReceiveCount: the receive that reaches it is the last attempt, and its failure
    moves the message to the DLQ (explicitly, at once) and marks the task FAILED."""

    max_receives: int
    backoff_s: float = setting_field(c.RETRY_BACKOFF_SECONDS)
    backoff_cap_s: float = setting_field(c.RETRY_BACKOFF_CAP_SECONDS)

    def is_last(self, receive_count: int) -> bool:
        return receive_count >= self.max_receives

    def delay_s(self, receive_count: int) -> int:
        """Visibility to set on a failed attempt (SQS takes whole seconds): base * 2^(n-1), capped."""
        return int(min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, receive_count - 1)))


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """A `setting_field` is the contract setting of the same meaning, with its default (core/contract.py); the other
    fields are what `from_env` works out from settings, the queue and the host."""

    queue_url: str = setting_field(c.TASK_QUEUE_URL)
    dlq_url: str = setting_field(c.TASK_DLQ_URL)
    table_name: str = setting_field(c.TASK_TABLE_NAME)
    status_index: str = setting_field(c.TASK_STATUS_INDEX)
    bucket: str = setting_field(c.ARTIFACTS_BUCKET)
    worker_id: str  # WORKER_ID, else host-pid
    visibility_s: int  # the queue's VisibilityTimeout: the heartbeat renews it; a heartbeat this old is stale
    retry: RetryBackoff
    wait_time_s: int = setting_field(c.WAIT_TIME_SECONDS)
    heartbeat_s: float  # HEARTBEAT_SECONDS, else from the visibility
    stop_grace_s: float = setting_field(c.STOP_GRACE_SECONDS)
    claim_grace_s: float = setting_field(c.CLAIM_GRACE_SECONDS)
    work_dir: str = setting_field(c.WORK_DIR)
    task_types_file: str | None = setting_field(c.TASK_TYPES_FILE)
    bundle_param: str | None = setting_field(c.ADAPTER_BUNDLE_PARAM)
    running_bundle: str | None = setting_field(c.ADAPTER_BUNDLE_URI)
    config_param: str | None = setting_field(c.ADAPTER_CONFIG_PARAM)
    rollout_check_s: float = setting_field(c.ROLLOUT_CHECK_SECONDS)
    dlq_sweep_s: float = setting_field(c.DLQ_SWEEP_SECONDS)
    job_user: str | None = setting_field(c.JOB_USER)
    slots: int  # tasks at once, one per GPU: GPU_SLOTS, else the host's GPUs
    fleet_name: str | None = setting_field(c.GPU_FLEET_NAME)  # fleet mode: the group this instance belongs to
    hook_name: str | None = setting_field(c.TERMINATION_HOOK_NAME)  # fleet mode: the group's termination hook
    metadata_url: str = setting_field(c.INSTANCE_METADATA_URL)
    metadata_watch_s: float = setting_field(c.METADATA_WATCH_SECONDS)
    hosts_table: str | None = None  # HOSTS_TABLE_NAME (required of the controller, optional here): liveness where set
    liveness_s: float = setting_field(c.LIVENESS_SECONDS)
    gpu_hourly_usd: float | None = setting_field(c.GPU_HOURLY_USD)  # the price: tasks' cost_usd and TaskCost
    metrics_namespace: str = setting_field(c.METRICS_NAMESPACE)
    metrics_log_group: str | None = setting_field(c.METRICS_LOG_GROUP)  # unset: the EMF lines go to stdout

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise c.SettingError(c.GPU_SLOTS.name, f"{self.slots} is not valid: at least 1 (one task per GPU)")
        for setting, value in (
            (c.METADATA_WATCH_SECONDS, self.metadata_watch_s),
            (c.LIVENESS_SECONDS, self.liveness_s),
        ):
            if value <= 0:
                raise c.SettingError(setting.name, f"{value:g} is not valid: must be more than 0")
        if self.gpu_hourly_usd is not None and self.gpu_hourly_usd < 0:
            raise c.SettingError(c.GPU_HOURLY_USD.name, f"{self.gpu_hourly_usd:g} is not valid: a price is 0 or more")
        if self.hook_name and not self.fleet_name:
            raise c.SettingError(
                c.TERMINATION_HOOK_NAME.name, f"{self.hook_name!r} is set without GPU_FLEET_NAME (a group's hook)"
            )

    @property
    def stale_after_ms(self) -> int:
        return self.visibility_s * 1000


def read_queue_settings(sqs: Any, queue_url: str) -> tuple[int, int | None]:
    """(VisibilityTimeout, maxReceiveCount or None) from the queue itself: one call at start."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"])
    attrs = attrs.get("Attributes", {})
    redrive = json.loads(attrs["RedrivePolicy"]) if attrs.get("RedrivePolicy") else {}
    max_receives = redrive.get("maxReceiveCount")
    return int(attrs.get("VisibilityTimeout", 300)), int(max_receives) if max_receives is not None else None


def from_env(
    env: Mapping[str, str],
    *,
    queue_visibility_s: int,
    queue_max_receives: int | None,
    detect_gpus: Callable[[], int] = gpu_count,
) -> AdapterConfig:
    visibility = c.VISIBILITY_TIMEOUT.read(env, default=queue_visibility_s)
    slots = c.GPU_SLOTS.read_optional(env)
    return read_fields(
        AdapterConfig,
        env,
        worker_id=c.WORKER_ID.read(env, default=f"{socket.gethostname()}-{os.getpid()}"),
        visibility_s=visibility,
        retry=read_fields(RetryBackoff, env, max_receives=c.MAX_RECEIVES.read(env, default=queue_max_receives)),
        # Several heartbeats per visibility window, so one slow or failed call does not let the message go.
        heartbeat_s=c.HEARTBEAT_SECONDS.read(env, default=max(0.2, min(60.0, visibility / 5))),
        slots=slots if slots is not None else detect_gpus(),
        hosts_table=c.HOSTS_TABLE_NAME.read_optional(env),
    )
