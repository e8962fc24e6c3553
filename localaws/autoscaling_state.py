"""The state localaws/autoscaling.py's model keeps beside moto's own objects: lifecycle states, pending lifecycle
actions, each group's warm pool, the model's settings (clock, phase durations), the instances' reboot counts and its
lock."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState, autoscaling_backends

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
MAX_GLOBAL_TIMEOUT_S = 172800.0  # API_LifecycleHook GlobalTimeout: 48 h or 100 x HeartbeatTimeout, the smaller
RESULTS = ("CONTINUE", "ABANDON")  # API_CompleteLifecycleAction LifecycleActionResult


class Lifecycle(StrEnum):
    """The LifecycleState values this model leaves an instance in (API_Instance.html)."""

    PENDING = "Pending"
    IN_SERVICE = "InService"
    STANDBY = "Standby"  # moto's EnterStandby
    TERMINATING_WAIT = "Terminating:Wait"
    WARMED_PENDING = "Warmed:Pending"
    WARMED_PENDING_WAIT = "Warmed:Pending:Wait"
    WARMED_STOPPED = "Warmed:Stopped"
    WARMED_TERMINATING_WAIT = "Warmed:Terminating:Wait"


# Where each state is headed: the target lifecycle state IMDS reports.
TARGET: dict[str, str] = {
    Lifecycle.PENDING: "InService",
    Lifecycle.IN_SERVICE: "InService",
    Lifecycle.STANDBY: "Standby",
    Lifecycle.TERMINATING_WAIT: "Terminated",
    Lifecycle.WARMED_PENDING: "Warmed:Stopped",
    Lifecycle.WARMED_PENDING_WAIT: "Warmed:Stopped",
    Lifecycle.WARMED_STOPPED: "Warmed:Stopped",
    Lifecycle.WARMED_TERMINATING_WAIT: "Warmed:Terminated",
}
CAPACITY = (Lifecycle.PENDING, Lifecycle.IN_SERVICE)  # what counts toward the desired capacity
POOLED = (Lifecycle.WARMED_PENDING, Lifecycle.WARMED_PENDING_WAIT, Lifecycle.WARMED_STOPPED)  # the pool's size


class Leave(StrEnum):
    POOL = "pool"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Settings:
    clock: Callable[[], float] = time.time
    pending_s: float = 0.0  # Pending -> InService
    warm_prepare_s: float = 0.0  # Warmed:Pending -> stopped (Warmed:Stopped)
    interruption_notice_s: float = 120.0  # the Spot two-minute interruption notice


@dataclass
class LifecycleAction:
    """One terminating hook's pending action on one instance."""

    hook: str
    token: str
    started: float
    heartbeat_at: float
    heartbeat_timeout: float
    default_result: str

    @property
    def deadline(self) -> float:
        global_timeout = min(MAX_GLOBAL_TIMEOUT_S, 100 * self.heartbeat_timeout)
        return min(self.heartbeat_at + self.heartbeat_timeout, self.started + global_timeout)


@dataclass
class Track:
    """What moto's InstanceState lacks: when the instance entered its state, and what it waits on."""

    since: float
    leave: Leave | None = None
    actions: dict[str, LifecycleAction] = field(default_factory=dict)  # hook name -> action
    interrupted_at: float | None = None  # the Spot interruption notice
    at_risk: bool = False  # a rebalance recommendation: leaves once its replacement is in service


@dataclass
class GroupModel:
    warm: list[InstanceState] = field(default_factory=list)
    tracks: dict[str, Track] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)  # left instances -> their final target lifecycle state


LOCK = threading.RLock()  # moto's server answers in threads; every model change and every patched call holds this
REBOOTS: dict[str, int] = {}  # instance id -> RebootInstances calls that rebooted it (localaws/autoscaling_api.py)
_settings = Settings()
_models: weakref.WeakKeyDictionary[FakeAutoScalingGroup, GroupModel] = weakref.WeakKeyDictionary()


def current() -> Settings:
    return _settings


@contextmanager
def settings(**changes: Any) -> Iterator[Settings]:
    """Run the model with other Settings (a test's clock, a Pending phase) for the duration of the block."""
    global _settings
    with LOCK:
        saved, _settings = _settings, replace(_settings, **changes)
    try:
        yield _settings
    finally:
        with LOCK:
            _settings = saved


def now() -> float:
    return _settings.clock()


def reboots(instance_id: str) -> int:
    """How many times RebootInstances rebooted `instance_id` (what localaws/host.py's EmulatedHost watches)."""
    with LOCK:
        return REBOOTS.get(instance_id, 0)


def model_of(group: FakeAutoScalingGroup) -> GroupModel:
    found = _models.get(group)
    if found is None:
        found = _models[group] = GroupModel()
    return found


def groups() -> list[FakeAutoScalingGroup]:
    """Every group of every account and region that exists (reading a BackendDict's values creates nothing)."""
    found: list[FakeAutoScalingGroup] = []
    for account in list(autoscaling_backends.values()):
        for backend in list(account.values()):
            found += list(backend.autoscaling_groups.values())
    return found
