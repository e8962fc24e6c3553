"""The controller's settings, read from its environment (names, defaults and meanings: core/contract.py LAMBDA).

Two modes, exactly one configured: GPU_INSTANCE_IDS (adopt and create modes: the controller starts and stops those
instances) or GPU_FLEET_NAME (fleet mode: it sets the Auto Scaling group's desired capacity, GPU_SLOTS tasks per
instance). HOSTS_TABLE_NAME turns on what needs the GPU hosts table (core/hosts.py): the billed running intervals
(functions/shutdown/usage.py) and the stuck-worker recovery (functions/shutdown/stuck.py, recovery.py); unset, the
controller does exactly what it did before that table existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import contract as c
from core.contract import SettingError
from core.idle import Policy

from .stuck import StuckPolicy

LOGGER = "shutdown"  # the controller's logger: its one JSON line per run
DEFAULT_SLOTS = 1  # the controller's default for GPU_SLOTS (the adapter's own is nvidia-smi's GPU count)


@dataclass(frozen=True)
class ShutdownSettings:
    instance_ids: tuple[str, ...]
    queue_url: str
    table_name: str
    status_index: str
    policy: Policy
    stopping_wait_s: float
    fleet_name: str | None = None
    slots: int = DEFAULT_SLOTS
    hosts_table_name: str | None = None  # None: no running intervals, no stuck-worker recovery
    stuck_after_s: float = c.STUCK_AFTER_SECONDS.default or 0.0
    metrics_namespace: str = c.METRICS_NAMESPACE.default or ""

    @property
    def fleet_mode(self) -> bool:
        return self.fleet_name is not None

    @property
    def stuck(self) -> StuckPolicy:
        return StuckPolicy(self.stuck_after_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShutdownSettings:
        instance_ids, fleet_name = _mode(env)
        slots = _slots(env)
        stuck_after_s = _stuck_after_s(env)
        return cls(
            instance_ids=instance_ids,
            queue_url=c.TASK_QUEUE_URL.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            status_index=c.TASK_STATUS_INDEX.read(env),
            policy=Policy.from_env(env),
            stopping_wait_s=c.STOPPING_WAIT_SECONDS.read(env),
            fleet_name=fleet_name,
            slots=slots,
            hosts_table_name=c.HOSTS_TABLE_NAME.read_optional(env),
            stuck_after_s=stuck_after_s,
            metrics_namespace=c.METRICS_NAMESPACE.read(env),
        )


def _mode(env: Mapping[str, str]) -> tuple[tuple[str, ...], str | None]:
    """GPU_INSTANCE_IDS and GPU_FLEET_NAME, exactly one of them set."""
    instance_ids = c.GPU_INSTANCE_IDS.read(env)
    fleet_name = c.GPU_FLEET_NAME.read_optional(env)
    if bool(instance_ids) == (fleet_name is not None):
        which = "both are set" if instance_ids else "neither is set"
        raise SettingError(
            c.GPU_FLEET_NAME.name,
            f"set exactly one of {c.GPU_INSTANCE_IDS.name} (adopt and create modes) or {c.GPU_FLEET_NAME.name} "
            f"(fleet mode); {which}",
        )
    return instance_ids, fleet_name


def _slots(env: Mapping[str, str]) -> int:
    slots = c.GPU_SLOTS.read(env, DEFAULT_SLOTS)
    if slots < 1:
        raise SettingError(c.GPU_SLOTS.name, f"{slots} is not valid: an instance runs at least 1 task")
    return slots


def _stuck_after_s(env: Mapping[str, str]) -> float:
    stuck_after_s = c.STUCK_AFTER_SECONDS.read(env)
    if stuck_after_s <= 0:
        raise SettingError(c.STUCK_AFTER_SECONDS.name, f"{stuck_after_s:g} is not valid: it must be above 0")
    return stuck_after_s
