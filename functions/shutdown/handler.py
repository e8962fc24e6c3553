"""`shutdown-gpu-lambda`: stop the GPU when truly idle, start it when work waits. Handler: `shutdown.handler.handler`.

Invoked by the CloudWatch alarm (fast path) and by an EventBridge schedule every 5 minutes (the backstop that
makes the seed's failures 2-4 harmless: a stuck or silent alarm no longer matters, and a task that arrived while
the instance was stopping is started on the next run). Every invocation is idempotent: it reads the world, decides,
re-reads right before a stop, acts, and prints exactly one JSON line with the inputs and the decision.

Environment: the settings `core.contract.LAMBDA` lists (names, defaults and meanings are declared there). The region
comes from the runtime (AWS_REGION).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from core import contract as c
from core import logs
from core.idle import Action, Decision, Observation, Policy, confirm_stop, decide
from core.instances import Change, InstanceState, change_state, read_instances
from core.observe import Sources, observe

log = logging.getLogger("shutdown")
LAMBDA_MARGIN_S = 10.0  # leave this much of the Lambda's timeout for the act + log after any wait


@dataclass(frozen=True)
class ShutdownSettings:
    instance_ids: tuple[str, ...]
    queue_url: str
    table_name: str
    status_index: str
    policy: Policy
    stopping_wait_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShutdownSettings:
        return cls(
            instance_ids=c.GPU_INSTANCE_IDS.read(env),
            queue_url=c.TASK_QUEUE_URL.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            status_index=c.TASK_STATUS_INDEX.read(env),
            policy=Policy.from_env(env),
            stopping_wait_s=c.STOPPING_WAIT_SECONDS.read(env),
        )


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
) -> dict[str, Any]:
    """observe -> decide -> (re-observe before a stop | wait out `stopping`) -> act; returns the logged record."""
    policy = config.policy
    record: dict[str, Any] = {
        "trigger": trigger,
        "policy": asdict(policy),
        "instance_ids": list(config.instance_ids),
    }
    try:
        first = observe(src, clock(), policy)
        record["observation"] = _obs_log(first)
        decision = decide(first, policy)
        record["first_decision"] = decision.to_log()
        if decision.action == Action.STOP:
            # Something may have arrived while we looked: stop only if a fresh read agrees.
            second = observe(src, clock(), policy)
            record["recheck"] = _obs_log(second)
            decision = confirm_stop(decision, decide(second, policy))
        elif decision.stopping_ids:
            budget = config.stopping_wait_s
            if remaining_s is not None:
                budget = min(budget, remaining_s - LAMBDA_MARGIN_S)
            if budget > 0 and wait_until_stopped(
                src.ec2, decision.stopping_ids, budget_s=budget, clock=clock, sleep=sleep
            ):
                after = observe(src, clock(), policy)
                record["after_wait"] = _obs_log(after)
                decision = decide(after, policy)
        record["decision"] = decision.to_log()
        record["outcome"] = act(src.ec2, decision)
        return record
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        logs.event(log, "gpu_idle_decision", logging.ERROR if "error" in record else logging.INFO, **record)


def _trigger(event: Any) -> str | None:
    if not isinstance(event, dict):
        return None
    if "alarmData" in event:
        return "alarm"
    source = event.get("source")
    return str(source) if source is not None else None


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
    )
    remaining = context.get_remaining_time_in_millis() / 1000.0 if context is not None else None
    record = run(config, src, remaining_s=remaining, trigger=_trigger(event))
    return {
        "action": record["decision"]["action"],
        "reason": record["decision"]["reason"],
        "outcome": record["outcome"],
    }
