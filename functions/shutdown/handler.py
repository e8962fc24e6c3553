"""`shutdown-gpu-lambda`, the controller: the one owner of GPU starts and stops. Handler: `shutdown.handler.handler`.

It stops the GPUs when truly idle and starts as many as waiting work needs (core/idle.py). Invoked asynchronously
by the API after each accepted submit (trigger "api", event source `core.contract.API_EVENT_SOURCE`), by the
CloudWatch alarm, and by an EventBridge schedule every minute: the backstop that makes the seed's failures 2-4
harmless (a stuck or silent alarm, or a lost API nudge, no longer matters, and a task that arrived while an
instance was stopping is started within a minute of it reaching `stopped`). Reserved concurrency 1 runs one
decision at a time. Every invocation is idempotent, so Lambda's at-least-once delivery of asynchronous events
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html) is harmless: it reads the
world, decides, re-reads right before a stop, acts, and prints exactly one JSON line with the inputs and the
decision, after the run's metric lines (functions/shutdown/telemetry.py).

With HOSTS_TABLE_NAME set, each run also records the billed running intervals and recovers stuck workers (reboot,
then stop and requeue their tasks) before the idle rule decides: functions/shutdown/upkeep.py.

In fleet mode (GPU_FLEET_NAME instead of GPU_INSTANCE_IDS) it sets the GPU fleet's desired capacity instead of
starting and stopping instances itself: functions/shutdown/fleet.py.

Environment: the settings `core.contract.LAMBDA` lists (names, defaults and meanings are declared there), read by
functions/shutdown/settings.py. The region comes from the runtime (AWS_REGION).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from core import contract as c
from core import logs
from core.idle import Action, Decision, Observation, confirm_stop, decide
from core.instances import Change, InstanceState, change_state, read_instances
from core.observe import Sources, observe
from core.store import TaskStore
from core.tasks import TaskRecord

from .fleet import run_fleet
from .record import logged, new_record
from .recovery import read_running
from .settings import LOGGER, ShutdownSettings
from .stuck import StuckAction
from .telemetry import RunCounts, Write, changed, emit_run, overdue, recoveries, type_timeouts
from .upkeep import Tended, tend

__all__ = ["ShutdownSettings", "cause_of", "handler", "run", "trigger_of"]
log = logging.getLogger(LOGGER)
LAMBDA_MARGIN_S = 10.0  # leave this much of the Lambda's timeout for the act + log after any wait


def _obs_log(obs: Observation) -> dict[str, Any]:
    return asdict(obs)  # InstanceState is a str enum: json writes its value


def act(ec2: Any, decision: Decision) -> list[dict[str, Any]]:
    """Start or stop what the decision names (core.instances.change_state: one call per instance)."""
    if decision.action == Action.NONE:
        return []
    change = Change.STOP if decision.action == Action.STOP else Change.START
    return [result.to_log() for result in change_state(ec2, change, decision.instance_ids)]


def wait_until_stopped(
    ec2: Any, ids: tuple[str, ...], *, budget_s: float, clock: Callable[[], float], sleep: Callable[[float], None]
) -> bool:
    """Poll DescribeInstances until none of `ids` is still `stopping`, for at most `budget_s`."""
    deadline = clock() + budget_s
    poll_s = min(5.0, max(0.2, budget_s / 10))
    while True:
        if all(i.state != InstanceState.STOPPING for i in read_instances(ec2, ids)):
            return True
        if clock() + poll_s > deadline:
            return False
        sleep(poll_s)


def run(
    config: ShutdownSettings,
    src: Sources,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    remaining_s: float | None = None,
    trigger: str | None = None,
    cause: Mapping[str, Any] | None = None,
    tasks: Callable[[], TaskStore] | None = None,
    metrics: Write | None = None,
) -> dict[str, Any]:
    """observe -> (hosts upkeep) -> decide -> (re-observe before a stop) -> act -> (wait out `stopping`, re-decide,
    start) -> metrics; returns the logged record. `cause`: what the invoking event said (the API's reason and task
    id), for the log. `tasks`: builds the TaskStore a stuck worker's tasks are requeued through (only called when one
    is); `metrics`: where the metric lines go (default stdout). In fleet mode: functions/shutdown/fleet.py run_fleet."""
    if config.fleet_mode:
        return run_fleet(config, src, clock=clock, trigger=trigger, cause=cause, tasks=tasks, metrics=metrics)
    policy = config.policy
    started = clock()
    record = new_record(policy, trigger=trigger, cause=cause, instance_ids=list(config.instance_ids))
    with logged(record):
        first = observe(src, started, policy)
        record["observation"] = _obs_log(first)
        running = read_running(src)
        tended = Tended()  # the hosts upkeep, when HOSTS_TABLE_NAME is set; nothing (and nothing logged) otherwise
        if config.hosts_table_name is not None:
            seen = first.instances
            tended = tend(config, src, first, record, seen=seen, judged=seen, running=running, tasks=tasks, clock=clock)

        def look() -> Observation:
            return tended.for_starts(observe(src, clock(), policy))

        decision = decide(tended.for_starts(first), policy)
        record["first_decision"] = decision.to_log()
        if decision.action == Action.STOP:
            # Something may have arrived while we looked: stop only if a fresh read agrees.
            second = look()
            record["recheck"] = _obs_log(second)
            decision = confirm_stop(decision, decide(second, policy))
        outcome = act(src.ec2, decision)  # the stopped ones start now, before any wait for the stopping ones
        if decision.stopping_ids:
            left = None if remaining_s is None else remaining_s - (clock() - started)
            decision, more = _after_stopping(config, src, decision, record, left, look=look, clock=clock, sleep=sleep)
            outcome += more
        record["decision"] = decision.to_log()
        record["outcome"] = outcome
        _publish(config, first, running.tasks, decision, outcome, tended, write=metrics)
    return record


def _publish(
    config: ShutdownSettings,
    first: Observation,
    running: list[TaskRecord],
    decision: Decision,
    outcome: list[dict[str, Any]],
    tended: Tended,
    *,
    write: Write | None,
) -> None:
    """The run's metric lines (functions/shutdown/telemetry.py): a stuck instance stopped counts as a stop too."""
    moved = changed(outcome)
    steps = recoveries(tended.done)
    counts = RunCounts(
        up=sum(1 for i in first.instances if i.state.up),
        waiting=first.visible + first.delayed,
        starts=moved if decision.action == Action.START else 0,
        stops=(moved if decision.action == Action.STOP else 0) + steps.get(StuckAction.STOP, 0),
        overdue=overdue(running, now=first.now, timeouts=type_timeouts()),
        recoveries=steps,
    )
    emit_run(config.metrics_namespace, counts, write=write)


def _after_stopping(
    config: ShutdownSettings,
    src: Sources,
    decision: Decision,
    record: dict[str, Any],
    remaining_s: float | None,
    *,
    look: Callable[[], Observation],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[Decision, list[dict[str, Any]]]:
    """Work waits on `stopping` instances: wait for `stopped` within the Lambda's remaining time, then decide again
    from a fresh read (`look`; what was just started counts as up) and act only on a START: a stop always needs its
    own re-check, which the next run gives it."""
    budget = config.stopping_wait_s
    if remaining_s is not None:
        budget = min(budget, remaining_s - LAMBDA_MARGIN_S)
    if budget <= 0 or not wait_until_stopped(src.ec2, decision.stopping_ids, budget_s=budget, clock=clock, sleep=sleep):
        return decision, []
    after = look()
    record["after_wait"] = _obs_log(after)
    again = decide(after, config.policy)
    if again.action == Action.START:
        return again, act(src.ec2, again)
    if decision.action == Action.START:
        return decision, []  # what this run started stands; the fresh read needs no more
    return Decision(Action.NONE, f"after waiting for stopping instance(s): {again.reason}"), []


def trigger_of(event: Any) -> str | None:
    """What invoked this run, for the log: "alarm", "api" (the orchestrator after a submit), else the event's
    source ("aws.events" for the schedule)."""
    if not isinstance(event, dict):
        return None
    if "alarmData" in event:
        return "alarm"
    source = event.get("source")
    if source == c.API_EVENT_SOURCE:
        return "api"
    return str(source) if source is not None else None


def cause_of(event: Any) -> dict[str, Any] | None:
    """The API's reason and task id, when the API sent the event."""
    if trigger_of(event) != "api":
        return None
    return {k: event[k] for k in ("reason", "task_id") if isinstance(event.get(k), str)}


def _task_store(config: ShutdownSettings, boto_cfg: BotoConfig) -> Callable[[], TaskStore]:
    """The TaskStore a stuck worker's tasks are requeued through, built on first use: most runs requeue nothing."""

    @cache
    def build() -> TaskStore:
        table = boto3.resource("dynamodb", config=boto_cfg).Table(config.table_name)
        return TaskStore(table, status_index=config.status_index)

    return build


def handler(event: Any, context: Any) -> dict[str, Any]:
    logs.setup(c.LOG_LEVEL.read(os.environ), loggers=(log.name,))  # the runtime owns the root logger
    config = ShutdownSettings.from_env(os.environ)
    boto_cfg = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15)
    src = Sources(
        sqs=boto3.client("sqs", config=boto_cfg),
        dynamodb=boto3.client("dynamodb", config=boto_cfg),
        ec2=boto3.client("ec2", config=boto_cfg),
        queue_url=config.queue_url,
        table_name=config.table_name,
        status_index=config.status_index,
        instance_ids=config.instance_ids,
        autoscaling=boto3.client("autoscaling", config=boto_cfg) if config.fleet_mode else None,
    )
    remaining = context.get_remaining_time_in_millis() / 1000.0 if context is not None else None
    tasks = _task_store(config, boto_cfg) if config.hosts_table_name is not None else None
    record = run(config, src, remaining_s=remaining, trigger=trigger_of(event), cause=cause_of(event), tasks=tasks)
    return {
        "action": record["decision"]["action"],
        "reason": record["decision"]["reason"],
        "outcome": record["outcome"],
    }
