"""The billed running intervals the controller records (functions/shutdown/usage.py) and its per-run metrics
(functions/shutdown/telemetry.py), on the local AWS (moto on 127.0.0.1, conftest's `local_aws`), the controller run
in-process as Lambda runs it (localaws/lambdas.py), on an injected clock.

EC2's LaunchTime is the last start: the local AWS sets it on each StartInstances of a stopped instance, as EC2 does
(localaws/autoscaling.py), so a stop and a start begin a new interval; every run extends the current one, and a
duplicate or late run changes nothing. Where the synthesized stacks do not declare the GPU hosts table yet, the
test creates one (tests/test_stuck_worker.py `hosts_table`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from core.hosts import HostStore, RunInterval
from core.tasks import TaskStatus
from functions.shutdown.telemetry import overdue, type_timeouts
from localaws.lambdas import LocalController, Run
from tests._adapter_support import store_for
from tests.test_stuck_worker import hosts_table


def run(aws: Any, clock: Callable[[], float], **env: str) -> Run:
    with LocalController(aws, env=env, clock=clock) as controller:
        controller.scheduled()
        assert controller.drain(60)
    (found,) = controller.runs
    assert found.error is None and found.record is not None, found.error
    return found


def launch_ms(aws: Any, instance_id: str) -> int:
    (inst,) = aws.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    return round(inst["LaunchTime"].timestamp() * 1000)


def intervals(hosts: HostStore) -> list[RunInterval]:
    return sorted(hosts.intervals_since(0), key=lambda i: i.started_at)


@pytest.fixture
def table(local_aws: Any) -> str:
    return hosts_table(local_aws)


def test_intervals_follow_launch_time_across_a_stop_and_a_start_and_duplicates_change_nothing(
    local_aws: Any, table: str
) -> None:
    aws, ec2 = local_aws, local_aws.client("ec2")
    gpu = aws.instance_ids[0]
    hosts = HostStore(aws.client("dynamodb"), table)
    env = {"HOSTS_TABLE_NAME": table, "GPU_SLOTS": "2", "MIN_UPTIME_SECONDS": "3600"}  # no idle stop in between
    ec2.start_instances(InstanceIds=[gpu])
    first = launch_ms(aws, gpu)
    t0 = time.time()
    seen = run(aws, lambda: t0 + 60, **env)
    assert seen.record is not None and seen.record["intervals"] == [
        {"instance_id": gpu, "launched_ms": first, "seen_ms": int((t0 + 60) * 1000)}
    ]
    for _ in range(2):  # Lambda delivers at least once: the same run again, then one from the past
        run(aws, lambda: t0 + 60, **env)
    run(aws, lambda: t0 + 30, **env)
    assert intervals(hosts) == [RunInterval(gpu, first, int((t0 + 60) * 1000), 2)]
    run(aws, lambda: t0 + 120, **env)
    assert intervals(hosts) == [RunInterval(gpu, first, int((t0 + 120) * 1000), 2)]

    ec2.stop_instances(InstanceIds=[gpu])
    stopped = run(aws, lambda: t0 + 180, **env)  # stopped: nothing to record, the interval ends where it was
    assert stopped.record is not None and stopped.record["intervals"] == []
    time.sleep(1.1)  # LaunchTime has whole seconds: the next start must fall in another one
    ec2.start_instances(InstanceIds=[gpu])
    second = launch_ms(aws, gpu)
    assert second > first
    run(aws, lambda: t0 + 240, **env)
    (old, new) = intervals(hosts)
    assert old == RunInterval(gpu, first, int((t0 + 120) * 1000), 2)
    assert new == RunInterval(gpu, second, int((t0 + 240) * 1000), 2)


def test_without_the_hosts_table_the_controller_records_nothing_and_runs_as_before(local_aws: Any, table: str) -> None:
    gpu = local_aws.instance_ids[0]
    local_aws.client("ec2").start_instances(InstanceIds=[gpu])
    plain = run(local_aws, time.time, HOSTS_TABLE_NAME="", MIN_UPTIME_SECONDS="3600")
    assert plain.record is not None and "stuck" not in plain.record and "intervals" not in plain.record
    assert list(HostStore(local_aws.client("dynamodb"), table).intervals_since(0)) == []
    (metrics,) = plain.metrics
    assert (metrics["InstancesUp"], metrics["TasksWaiting"], metrics["InstanceStarts"]) == (1, 0, 0)


def test_tasks_past_their_types_timeout_are_counted_overdue(local_aws: Any) -> None:
    """noop allows 60 s (core/task_types.json): one claimed 120 s before the run is overdue, one claimed now is not,
    and a RUNNING item of a type the registry does not know is not counted."""
    assert type_timeouts()["noop"] == 60
    store = store_for(local_aws)
    now = time.time()
    late, fresh = (store.create(task_type="noop", params={}) for _ in range(2))
    store.claim(late.task_id, worker="w", stale_after_ms=1, at_ms=int((now - 120) * 1000))
    store.claim(fresh.task_id, worker="w", stale_after_ms=1, at_ms=int(now * 1000))
    unknown = store.create(task_type="retired-type", params={})
    store.claim(unknown.task_id, worker="w", stale_after_ms=1, at_ms=int((now - 86400) * 1000))
    running = store.list_by_status(TaskStatus.RUNNING).items
    assert len(running) == 3 and overdue(running, now=now, timeouts=type_timeouts()) == 1
    measured = run(local_aws, lambda: now, HOSTS_TABLE_NAME="")
    (metrics,) = measured.metrics
    names = [m["Name"] for m in metrics["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert metrics["TasksOverdue"] == 1 and "TasksOverdue" in names
