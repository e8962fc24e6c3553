"""The controller's settings, read from its environment (names, defaults and meanings: core/contract.py LAMBDA).

Two modes, exactly one configured: GPU_INSTANCE_IDS (adopt and create modes: the controller starts and stops those
instances) or GPU_FLEET_NAME (fleet mode: it sets the Auto Scaling group's desired capacity, GPU_SLOTS tasks per
instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core import contract as c
from core.contract import SettingError
from core.idle import Policy

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

    @property
    def fleet_mode(self) -> bool:
        return self.fleet_name is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShutdownSettings:
        instance_ids = c.GPU_INSTANCE_IDS.read(env)
        fleet_name = c.GPU_FLEET_NAME.read_optional(env)
        if bool(instance_ids) == (fleet_name is not None):
            which = "both are set" if instance_ids else "neither is set"
            raise SettingError(
                c.GPU_FLEET_NAME.name,
                f"set exactly one of {c.GPU_INSTANCE_IDS.name} (adopt and create modes) or {c.GPU_FLEET_NAME.name} "
                f"(fleet mode); {which}",
            )
        slots = c.GPU_SLOTS.read(env, DEFAULT_SLOTS)
        if slots < 1:
            raise SettingError(c.GPU_SLOTS.name, f"{slots} is not valid: an instance runs at least 1 task")
        return cls(
            instance_ids=instance_ids,
            queue_url=c.TASK_QUEUE_URL.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            status_index=c.TASK_STATUS_INDEX.read(env),
            policy=Policy.from_env(env),
            stopping_wait_s=c.STOPPING_WAIT_SECONDS.read(env),
            fleet_name=fleet_name,
            slots=slots,
        )
