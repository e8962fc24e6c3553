"""The stuck-worker rule's reads and its acting (the rule itself: functions/shutdown/stuck.py).

Reads: the RUNNING tasks through the task table's status index (paged, bounded: `read_running`), and the hosts'
liveness items (core.hosts.HostStore.liveness, one BatchGetItem per 100 instances).

Acting, one step at a time, each recorded on the instance's liveness item only once AWS accepted it:
- REBOOT: EC2 RebootInstances ("Requests a reboot of the specified instances ... If an instance does not cleanly shut
  down within a few minutes, Amazon EC2 performs a hard reboot",
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RebootInstances.html), then note_recovery("rebooted_at").
- STOP, adopt and create modes: StopInstances through core.instances.change_state. Fleet mode: Auto Scaling
  SetInstanceHealth HealthStatus=Unhealthy, ShouldRespectGracePeriod=False ("Amazon EC2 Auto Scaling terminates and
  replaces the unhealthy instance",
  https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceHealth.html); scale-in protection, which a
  busy adapter holds, does not protect an instance from a health check replacement
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html). Then
  note_recovery("recovered_stop_at"), and each RUNNING task of its worker goes back in the queue (`requeue`).
- CLEAR: clear_recovery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from core import logs
from core.hosts import HostStore
from core.instances import BENIGN_ERRORS, Change, change_state
from core.message import TaskMessage
from core.observe import Sources
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord, TaskStatus, new_enqueue_id

from .settings import LOGGER
from .stuck import Step, StuckAction

log = logging.getLogger(LOGGER)
# RUNNING tasks read per run: pages of RUNNING_READ_PAGE, at most RUNNING_READ_PAGES of them. Past that the read is
# incomplete, and the rule reboots or stops nothing (an unread task may show progress).
RUNNING_READ_PAGE = 100
RUNNING_READ_PAGES = 5
# A requeued task's fresh message is sent delayed by this much (SendMessage DelaySeconds, 0..900 on a standard queue:
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html), so the item names it
# as current (TaskStore.requeue) before any adapter can receive it: an adapter deletes unrun a copy whose enqueue id
# is not the item's. A requeue write slower than that is followed by a second copy of the same id, which an adapter
# runs or, the task already held or ended, leaves alone.
REQUEUE_DELAY_S = 2
# SetInstanceHealth's refusals that mean "not now / not there": ValidationError for an instance that is no longer a
# member (it left the group meanwhile), ResourceContention (API_SetInstanceHealth.html, Errors). The next run sees.
HEALTH_BENIGN_ERRORS = frozenset({"ValidationError", "ResourceContention"})


def stuck_error(instance_id: str) -> str:
    """The error a task requeued from a stuck worker carries."""
    return f"requeued: the worker on {instance_id} was stuck"


@dataclass(frozen=True)
class RunningRead:
    """The RUNNING tasks, newest created first; `complete`: that is all of them; `unreadable`: ids of items that are
    no task record (no type, say), left out: they name no worker whose progress they could show."""

    tasks: list[TaskRecord]
    complete: bool
    unreadable: list[str] = field(default_factory=list)


def _record(de: TypeDeserializer, item: Mapping[str, Any]) -> TaskRecord | None:
    try:
        return TaskRecord.from_item({k: de.deserialize(v) for k, v in item.items()})
    except (TypeError, ValueError, KeyError):
        return None


def read_running(src: Sources) -> RunningRead:
    """Every RUNNING task through the status index, page by page, at most RUNNING_READ_PAGES pages."""
    found: list[TaskRecord] = []
    unreadable: list[str] = []
    de = TypeDeserializer()
    kwargs: dict[str, Any] = {
        "TableName": src.table_name,
        "IndexName": src.status_index,
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": TaskStatus.RUNNING.value}},
        "ScanIndexForward": False,
        "Limit": RUNNING_READ_PAGE,
    }
    for _ in range(RUNNING_READ_PAGES):
        out = src.dynamodb.query(**kwargs)
        for item in out.get("Items", []):
            record = _record(de, item)
            if record is None:
                unreadable.append(str(item.get("task_id", {}).get("S")))
            else:
                found.append(record)
        if not out.get("LastEvaluatedKey"):
            return RunningRead(found, True, unreadable)
        kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
    return RunningRead(found, False, unreadable)


@dataclass(frozen=True)
class Recovery:
    """What acting on the steps needs. `tasks`: builds the TaskStore (on a boto3 Table resource) the first time a
    task is requeued; None: nothing is requeued, and the tasks return through their own messages once those are
    visible again and their heartbeats stale (an adapter takes them over). `autoscaling`: fleet mode's client."""

    hosts: HostStore
    ec2: Any
    sqs: Any
    queue_url: str
    tasks: Callable[[], TaskStore] | None = None
    autoscaling: Any = None
    clock: Callable[[], float] = time.time


def apply(rec: Recovery, steps: Sequence[Step], running: Sequence[TaskRecord], *, now: float) -> list[dict[str, Any]]:
    """Carry out the REBOOT, STOP and CLEAR steps; what each did, for the run's log."""
    by_id = {t.task_id: t for t in running}
    done = []
    for step in steps:
        if step.action == StuckAction.NONE:
            continue
        out: dict[str, Any] = {"instance_id": step.instance_id, "action": step.action.value}
        if step.action == StuckAction.CLEAR:
            rec.hosts.clear_recovery(step.instance_id)
        elif step.action == StuckAction.REBOOT:
            out.update(_reboot(rec, step.instance_id, now))
        else:
            out.update(_stop(rec, step.instance_id, now))
            if "error" not in out:
                out["requeued"] = [requeue(rec, by_id[t], step.instance_id) for t in step.requeue]
        done.append(out)
    return done


def _refusal(err: ClientError) -> str:
    code = str(err.response.get("Error", {}).get("Code"))
    if code not in BENIGN_ERRORS:
        raise err
    return code


def _reboot(rec: Recovery, instance_id: str, now: float) -> dict[str, Any]:
    try:
        rec.ec2.reboot_instances(InstanceIds=[instance_id])
    except ClientError as err:
        return {"error": _refusal(err), "note": "left for the next run"}
    rec.hosts.note_recovery(instance_id, "rebooted_at", at_ms=int(now * 1000))
    return {}


def _stop(rec: Recovery, instance_id: str, now: float) -> dict[str, Any]:
    if rec.autoscaling is not None:
        try:
            rec.autoscaling.set_instance_health(
                InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
            )
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code not in HEALTH_BENIGN_ERRORS:
                raise
            return {"error": code, "note": "left for the next run"}
        result: dict[str, Any] = {"health": "Unhealthy"}
    else:
        (changed,) = change_state(rec.ec2, Change.STOP, [instance_id])
        result = changed.to_log()
        if changed.refused:
            return result
    rec.hosts.note_recovery(instance_id, "recovered_stop_at", at_ms=int(now * 1000))
    return result


def requeue(rec: Recovery, task: TaskRecord, instance_id: str) -> dict[str, Any]:
    """Put a task of a stopped stuck worker back in the queue, losing nothing: a fresh message (a new enqueue id,
    delayed by REQUEUE_DELAY_S), then the item QUEUED with that id as its current one (TaskStore.requeue, fenced on
    the worker and attempt read). The message the stuck worker held becomes a stale copy, deleted unrun when it
    comes back. A rejected requeue means the task moved on (ended, or was taken over): the fresh copy is then the
    stale one."""
    out: dict[str, Any] = {"task_id": task.task_id}
    if rec.tasks is None:
        out["note"] = "no task store: the task returns through its own message"
        return out
    fresh = TaskMessage(task.task_id, new_enqueue_id())
    sent = rec.clock()
    rec.sqs.send_message(QueueUrl=rec.queue_url, MessageBody=fresh.encode(), DelaySeconds=REQUEUE_DELAY_S)
    try:
        rec.tasks().requeue(task, error=stuck_error(instance_id), enqueue_id=fresh.enqueue_id)
    except TransitionRejected as rejected:
        out["rejected"] = str(rejected)
        logs.event(log, "stuck_requeue_rejected", logging.WARNING, task_id=task.task_id, why=str(rejected))
        return out
    if rec.clock() - sent >= REQUEUE_DELAY_S:  # the first copy may have been seen before the item named it
        rec.sqs.send_message(QueueUrl=rec.queue_url, MessageBody=fresh.encode())
        out["resent"] = True
    out["enqueue_id"] = fresh.enqueue_id
    return out


def liveness_log(liveness: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The liveness items as the run's log shows them."""
    return {
        iid: {k: getattr(live, k) for k in ("seen_at", "worker", "rebooted_at", "recovered_stop_at")}
        for iid, live in liveness.items()
    }
