"""Billed running intervals: on every run, each instance EC2 reports `running` extends its interval in the GPU hosts
table (core.hosts.HostStore.record_running), keyed by its LaunchTime.

EC2 bills an instance while it runs, from each start to its stop
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html), and LaunchTime is "the time
that the instance was last launched", i.e. started
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Instance.html). So a new LaunchTime begins a new
interval, and every run moves the current one's `last_seen` forward. The write is conditional on `last_seen` only
growing: a duplicate or late invocation changes nothing. The interval ends where the controller last saw it
running: short of the real stop by at most one schedule period (the controller runs every minute).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.hosts import HostStore
from core.instances import Instance, InstanceState


def record_running(hosts: HostStore, instances: Iterable[Instance], *, now: float, slots: int) -> list[dict[str, Any]]:
    """Record each running instance as seen at `now`; what was recorded, for the run's log."""
    seen_ms = int(now * 1000)
    recorded = []
    for inst in instances:
        if inst.state != InstanceState.RUNNING or inst.launch_time is None:
            continue
        launched_ms = round(inst.launch_time * 1000)  # LaunchTime has whole seconds: no float residue in the key
        hosts.record_running(inst.instance_id, launched_ms=launched_ms, seen_ms=seen_ms, slots=slots)
        recorded.append({"instance_id": inst.instance_id, "launched_ms": launched_ms, "seen_ms": seen_ms})
    return recorded
