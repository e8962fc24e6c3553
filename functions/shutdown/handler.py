"""`shutdown-gpu-lambda`: stop the GPU when truly idle, start it when work waits. Handler: `shutdown.handler.handler`.

Invoked by the CloudWatch alarm (fast path) and by an EventBridge schedule every 5 minutes (the backstop that
makes the seed's failures 2-4 harmless: a stuck or silent alarm no longer matters, and a task that arrived while
the instance was stopping is started on the next run). Every invocation is idempotent: it reads the world, decides,
re-reads right before a stop, acts, and prints exactly one JSON line with the inputs and the decision.

Environment: GPU_INSTANCE_ID (comma-separated ids), TASK_QUEUE_URL, TASK_TABLE_NAME, TASK_STATUS_INDEX,
IDLE_WINDOW_SECONDS (1800), MIN_UPTIME_SECONDS (600), QUEUED_TASK_MAX_AGE_SECONDS (86400),
HEARTBEAT_STALE_SECONDS (900), STOPPING_WAIT_SECONDS (40). The region comes from the runtime (AWS_REGION).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from .decision import Action, Decision, InstanceState, Observation, Policy, confirm_stop, decide
from .observe import Sources, observe, read_instances

# Instance-level errors that mean "not now / not there": logged, never raised, the next run tries again.
BENIGN_EC2_ERRORS = frozenset({"IncorrectInstanceState", "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
LAMBDA_MARGIN_S = 10.0  # leave this much of the Lambda's timeout for the act + log after any wait


@dataclass(frozen=True)
class Config:
    instance_ids: tuple[str, ...]
    queue_url: str
    table_name: str
    status_index: str
    policy: Policy
    stopping_wait_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        ids = env.get("GPU_INSTANCE_ID") or env.get("GPU_INSTANCE_IDS", "")
        return cls(
            instance_ids=tuple(i.strip() for i in ids.split(",") if i.strip()),
            queue_url=env["TASK_QUEUE_URL"],
            table_name=env["TASK_TABLE_NAME"],
            status_index=env.get("TASK_STATUS_INDEX", "status-created_at-index"),
            policy=Policy(
                idle_window_s=float(env.get("IDLE_WINDOW_SECONDS", "1800")),
                min_uptime_s=float(env.get("MIN_UPTIME_SECONDS", "600")),
                queued_max_age_s=float(env.get("QUEUED_TASK_MAX_AGE_SECONDS", "86400")),
                heartbeat_stale_s=float(env.get("HEARTBEAT_STALE_SECONDS", "900")),
            ),
            stopping_wait_s=float(env.get("STOPPING_WAIT_SECONDS", "40")),
        )


def _obs_log(obs: Observation) -> dict[str, Any]:
    return asdict(obs)  # InstanceState is a str enum: json writes its value


def act(ec2: Any, decision: Decision) -> list[dict[str, Any]]:
    """One call per instance, so one instance in a bad state cannot block the others."""
    results: list[dict[str, Any]] = []
    if decision.action == Action.NONE:
        return results
    call = ec2.stop_instances if decision.action == Action.STOP else ec2.start_instances
    key = "StoppingInstances" if decision.action == Action.STOP else "StartingInstances"
    for instance_id in decision.instance_ids:
        try:
            out = call(InstanceIds=[instance_id])
            change = out[key][0]
            results.append(
                {
                    "instance_id": instance_id,
                    "from": change["PreviousState"]["Name"],
                    "to": change["CurrentState"]["Name"],
                }
            )
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code not in BENIGN_EC2_ERRORS:
                raise
            results.append({"instance_id": instance_id, "error": code, "note": "left for the next scheduled run"})
    return results


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
    config: Config,
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
        "event": "gpu_idle_decision",
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
        sys.stdout.write(json.dumps(record, default=str, sort_keys=True) + "\n")
        sys.stdout.flush()


def _trigger(event: Any) -> str | None:
    if not isinstance(event, dict):
        return None
    if "alarmData" in event:
        return "alarm"
    source = event.get("source")
    return str(source) if source is not None else None


def handler(event: Any, context: Any) -> dict[str, Any]:
    config = Config.from_env(os.environ)
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
