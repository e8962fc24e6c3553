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

from .slots import gpu_count


@dataclass(frozen=True)
class RetryBackoff:
    """When a failed attempt is retried and how long the message waits before it is visible again.

    `max_receives` is the queue's maxReceiveCount: the receive that reaches it is the last attempt, and its failure
    moves the message to the DLQ (explicitly, at once) and marks the task FAILED."""

    max_receives: int
    backoff_s: float = c.RETRY_BACKOFF_SECONDS.default or 0.0
    backoff_cap_s: float = c.RETRY_BACKOFF_CAP_SECONDS.default or 0.0

    def is_last(self, receive_count: int) -> bool:
        return receive_count >= self.max_receives

    def delay_s(self, receive_count: int) -> int:
        """Visibility to set on a failed attempt (SQS takes whole seconds): base * 2^(n-1), capped."""
        return int(min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, receive_count - 1)))


@dataclass(frozen=True)
class AdapterConfig:
    """Each field is the contract setting of the same meaning (see core/contract.py for its default)."""

    queue_url: str
    dlq_url: str
    table_name: str
    status_index: str
    bucket: str
    worker_id: str
    visibility_s: int  # the queue's VisibilityTimeout: the heartbeat renews it; a heartbeat this old is stale
    retry: RetryBackoff
    wait_time_s: int = c.WAIT_TIME_SECONDS.default or 0
    heartbeat_s: float = 60.0
    stop_grace_s: float = c.STOP_GRACE_SECONDS.default or 0.0
    claim_grace_s: float = c.CLAIM_GRACE_SECONDS.default or 0.0
    work_dir: str = c.WORK_DIR.default or ""
    task_types_file: str | None = None
    bundle_param: str | None = None
    running_bundle: str | None = None
    config_param: str | None = None
    rollout_check_s: float = c.ROLLOUT_CHECK_SECONDS.default or 0.0
    dlq_sweep_s: float = c.DLQ_SWEEP_SECONDS.default or 0.0
    job_user: str | None = None
    slots: int = 1  # tasks at once, one per GPU
    fleet_name: str | None = None  # fleet mode: the group this instance belongs to
    hook_name: str | None = None  # fleet mode: the group's termination lifecycle hook
    metadata_url: str = c.INSTANCE_METADATA_URL.default or ""
    metadata_watch_s: float = c.METADATA_WATCH_SECONDS.default or 0.0
    hosts_table: str | None = None  # liveness on (adapter/liveness.py) where set
    liveness_s: float = c.LIVENESS_SECONDS.default or 0.0
    gpu_hourly_usd: float | None = None  # the instance's price: tasks' cost_usd and TaskCost where set
    metrics_namespace: str = c.METRICS_NAMESPACE.default or ""
    metrics_log_group: str | None = None  # unset: the metrics' EMF lines go to stdout

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


def _above_zero(setting: c.Setting[float], env: Mapping[str, str]) -> float:
    value = setting.read(env)
    if value <= 0:
        raise c.SettingError(setting.name, f"{value:g} is not valid: must be more than 0")
    return value


def from_env(
    env: Mapping[str, str],
    *,
    queue_visibility_s: int,
    queue_max_receives: int | None,
    detect_gpus: Callable[[], int] = gpu_count,
) -> AdapterConfig:
    visibility = c.VISIBILITY_TIMEOUT.read(env, default=queue_visibility_s)
    slots = c.GPU_SLOTS.read_optional(env)
    if slots is not None and slots < 1:
        raise c.SettingError(c.GPU_SLOTS.name, f"{slots} is not valid: at least 1 (one task per GPU)")
    watch_s, liveness_s = _above_zero(c.METADATA_WATCH_SECONDS, env), _above_zero(c.LIVENESS_SECONDS, env)
    price = c.GPU_HOURLY_USD.read_optional(env)
    if price is not None and price < 0:
        raise c.SettingError(c.GPU_HOURLY_USD.name, f"{price:g} is not valid: a price is 0 or more")
    fleet, hook = c.GPU_FLEET_NAME.read_optional(env), c.TERMINATION_HOOK_NAME.read_optional(env)
    if hook and not fleet:
        raise c.SettingError(c.TERMINATION_HOOK_NAME.name, f"{hook!r} is set without GPU_FLEET_NAME (a group's hook)")
    return AdapterConfig(
        queue_url=c.TASK_QUEUE_URL.read(env),
        dlq_url=c.TASK_DLQ_URL.read(env),
        table_name=c.TASK_TABLE_NAME.read(env),
        status_index=c.TASK_STATUS_INDEX.read(env),
        bucket=c.ARTIFACTS_BUCKET.read(env),
        worker_id=c.WORKER_ID.read(env, default=f"{socket.gethostname()}-{os.getpid()}"),
        visibility_s=visibility,
        retry=RetryBackoff(
            max_receives=c.MAX_RECEIVES.read(env, default=queue_max_receives),
            backoff_s=c.RETRY_BACKOFF_SECONDS.read(env),
            backoff_cap_s=c.RETRY_BACKOFF_CAP_SECONDS.read(env),
        ),
        wait_time_s=c.WAIT_TIME_SECONDS.read(env),
        # Several heartbeats per visibility window, so one slow or failed call does not let the message go.
        heartbeat_s=c.HEARTBEAT_SECONDS.read(env, default=max(0.2, min(60.0, visibility / 5))),
        stop_grace_s=c.STOP_GRACE_SECONDS.read(env),
        claim_grace_s=c.CLAIM_GRACE_SECONDS.read(env),
        work_dir=c.WORK_DIR.read(env),
        task_types_file=c.TASK_TYPES_FILE.read_optional(env),
        bundle_param=c.ADAPTER_BUNDLE_PARAM.read_optional(env),
        running_bundle=c.ADAPTER_BUNDLE_URI.read_optional(env),
        config_param=c.ADAPTER_CONFIG_PARAM.read_optional(env),
        rollout_check_s=c.ROLLOUT_CHECK_SECONDS.read(env),
        dlq_sweep_s=c.DLQ_SWEEP_SECONDS.read(env),
        job_user=c.JOB_USER.read_optional(env),
        slots=slots if slots is not None else detect_gpus(),
        fleet_name=fleet,
        hook_name=hook,
        metadata_url=c.INSTANCE_METADATA_URL.read(env),
        metadata_watch_s=watch_s,
        hosts_table=c.HOSTS_TABLE_NAME.read_optional(env),
        liveness_s=liveness_s,
        gpu_hourly_usd=price,
        metrics_namespace=c.METRICS_NAMESPACE.read(env),
        metrics_log_group=c.METRICS_LOG_GROUP.read_optional(env),
    )
