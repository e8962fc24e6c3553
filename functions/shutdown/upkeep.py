"""What the controller does for the GPU hosts on every run besides starting and stopping them, in both modes, when
HOSTS_TABLE_NAME is set: record the billed running intervals (functions/shutdown/usage.py) and recover stuck workers
(the rule: functions/shutdown/stuck.py; reads and acting: functions/shutdown/recovery.py). It runs right after the
first observation, before the mode's own rule decides, so that the rule sees what it did: an instance it stopped,
or one still in quarantine, is left out of this run's starts (`Tended.for_starts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.hosts import HostStore
from core.idle import Observation, waiting_reason
from core.instances import Instance
from core.observe import Sources
from core.store import TaskStore

from .recovery import Recovery, RunningRead, apply, liveness_log
from .settings import ShutdownSettings
from .stuck import StuckAction, decide_stuck, quarantined
from .usage import record_running


@dataclass(frozen=True)
class Tended:
    """What the upkeep did this run: `log` goes under the run record's "stuck" key, `intervals` under "intervals"."""

    log: dict[str, Any] = field(default_factory=dict)
    intervals: list[dict[str, Any]] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    quarantine: frozenset[str] = frozenset()  # stopped for being stuck, within the quarantine (this run's stops too)
    stopped: frozenset[str] = frozenset()  # stopped by this run (EC2 may still report them running)

    def for_starts(self, obs: Observation) -> Observation:
        """`obs` as the START rule may use it: without this run's stuck stops, and without quarantined instances
        that are not up (one that is up stays: the idle rule may still stop it)."""
        keep = tuple(
            i
            for i in obs.instances
            if i.instance_id not in self.stopped and not (i.instance_id in self.quarantine and not i.state.up)
        )
        return replace(obs, instances=keep) if len(keep) != len(obs.instances) else obs


def tend(
    config: ShutdownSettings,
    src: Sources,
    obs: Observation,
    record: dict[str, Any],
    *,
    seen: Sequence[Instance],
    judged: Sequence[Instance],
    running: RunningRead,
    tasks: Callable[[], TaskStore] | None,
    clock: Callable[[], float],
) -> Tended:
    """Record the intervals of `seen` (every instance read), judge `judged` (the ones that run an adapter) against
    the first observation `obs`, act; what it did goes into the run record under "stuck" and "intervals"."""
    assert config.hosts_table_name is not None, "tend needs HOSTS_TABLE_NAME"
    now, waiting = obs.now, waiting_reason(obs, config.policy)
    hosts = HostStore(src.dynamodb, config.hosts_table_name)
    intervals = record_running(hosts, seen, now=now, slots=config.slots)
    policy = config.stuck
    liveness = hosts.liveness([i.instance_id for i in judged])
    tasks_read, complete = running.tasks, running.complete
    steps = decide_stuck(
        judged, liveness, tasks_read, waiting=waiting, now=now, policy=policy, running_complete=complete
    )
    autoscaling = src.autoscaling if config.fleet_mode else None
    rec = Recovery(hosts, src.ec2, src.sqs, src.queue_url, tasks=tasks, autoscaling=autoscaling, clock=clock)
    done = apply(rec, steps, tasks_read, now=now)
    stopped = frozenset(d["instance_id"] for d in done if d["action"] == StuckAction.STOP and "error" not in d)
    held = quarantined(liveness, now=now, policy=policy)
    log = {
        "policy": {"stuck_after_s": policy.stuck_after_s, "quarantine_s": policy.quarantine_s},
        "waiting": waiting,
        "running_read": len(tasks_read),
        "running_complete": complete,
        "running_unreadable": running.unreadable,
        "liveness": liveness_log(liveness),
        "steps": [s.to_log() for s in steps],
        "done": done,
        "quarantined_until": held,
    }
    record["stuck"], record["intervals"] = log, intervals
    return Tended(log, intervals, done, frozenset(held) | stopped, stopped)
