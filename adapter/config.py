"""The adapter's configuration: contract env var names plus tunables that tests shrink to seconds.

On the instance the env comes from systemd (the env file install.sh writes from the SSM config parameter). The
queue's own VisibilityTimeout and RedrivePolicy are read once at start, so the adapter and the queue cannot disagree
about when a message comes back or when SQS gives up on it; env vars may override for tests.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RECEIVES = 3  # the contract's maxReceiveCount, used only when the queue has no RedrivePolicy


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is retried and how long the message waits before it is visible again.

    `max_receives` is the queue's maxReceiveCount: the receive that reaches it is the last attempt, and its failure
    moves the message to the DLQ (explicitly, at once) and marks the task FAILED."""

    max_receives: int
    backoff_s: float = 5.0
    backoff_cap_s: float = 300.0

    def is_last(self, receive_count: int) -> bool:
        return receive_count >= self.max_receives

    def delay_s(self, receive_count: int) -> int:
        """Visibility to set on a failed attempt (SQS takes whole seconds): base * 2^(n-1), capped."""
        return int(min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, receive_count - 1)))


@dataclass(frozen=True)
class AdapterConfig:
    queue_url: str
    dlq_url: str
    table_name: str
    status_index: str
    bucket: str
    worker_id: str
    visibility_s: int  # the queue's VisibilityTimeout: the heartbeat renews it; a heartbeat this old is stale
    retry: RetryPolicy
    wait_time_s: int = 20  # SQS long poll
    heartbeat_s: float = 60.0
    stop_grace_s: float = 20.0  # SIGTERM -> SIGKILL for the task's process on cancel / instance stop
    claim_grace_s: float = 5.0  # wait this long for a dead holder's heartbeat to turn stale before giving up
    work_dir: str = "/var/lib/gpu-adapter/work"
    task_types_file: str | None = None
    bundle_param: str | None = None  # SSM parameter naming the bundle to run (rollout check)
    running_bundle: str | None = None  # what install.sh installed (the param's value at install time)
    config_param: str | None = None  # SSM parameter holding the env as JSON (a change also restarts the adapter)
    rollout_check_s: float = 60.0
    dlq_sweep_s: float = 60.0

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


def _num(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


def from_env(env: Mapping[str, str], *, queue_visibility_s: int, queue_max_receives: int | None) -> AdapterConfig:
    visibility = int(_num(env, "VISIBILITY_TIMEOUT", queue_visibility_s))
    max_receives = int(_num(env, "MAX_RECEIVES", queue_max_receives or DEFAULT_MAX_RECEIVES))
    return AdapterConfig(
        queue_url=env["TASK_QUEUE_URL"],
        dlq_url=env["TASK_DLQ_URL"],
        table_name=env["TASK_TABLE_NAME"],
        status_index=env.get("TASK_STATUS_INDEX") or "status-created_at-index",
        bucket=env["ARTIFACTS_BUCKET"],
        worker_id=env.get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
        visibility_s=visibility,
        retry=RetryPolicy(
            max_receives=max_receives,
            backoff_s=_num(env, "RETRY_BACKOFF_SECONDS", 5.0),
            backoff_cap_s=_num(env, "RETRY_BACKOFF_CAP_SECONDS", 300.0),
        ),
        wait_time_s=int(_num(env, "WAIT_TIME_SECONDS", 20)),
        # Several heartbeats per visibility window, so one slow or failed call does not let the message go.
        heartbeat_s=_num(env, "HEARTBEAT_SECONDS", max(0.2, min(60.0, visibility / 5))),
        stop_grace_s=_num(env, "STOP_GRACE_SECONDS", 20.0),
        claim_grace_s=_num(env, "CLAIM_GRACE_SECONDS", 5.0),
        work_dir=env.get("WORK_DIR") or "/var/lib/gpu-adapter/work",
        task_types_file=env.get("TASK_TYPES_FILE") or None,
        bundle_param=env.get("ADAPTER_BUNDLE_PARAM") or None,
        running_bundle=env.get("ADAPTER_BUNDLE_URI") or None,
        config_param=env.get("ADAPTER_CONFIG_PARAM") or None,
        rollout_check_s=_num(env, "ROLLOUT_CHECK_SECONDS", 60.0),
        dlq_sweep_s=_num(env, "DLQ_SWEEP_SECONDS", 60.0),
    )
