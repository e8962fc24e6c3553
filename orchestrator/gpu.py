"""The API's side of the GPUs: tell the controller that work arrived, and read the instances' state for /healthz.

The controller (the shutdown Lambda, functions/shutdown/handler.py) is the one owner of starts and stops. After
each accepted submit the API makes ONE asynchronous invoke of it (InvocationType=Event): Lambda queues the event
and answers 202 at once, so the request never waits for a start (or for a `stopping` instance to stop), and nothing
of the API has to outlive the request, which is what lets it run in Lambda, where a frozen execution environment
runs no background thread. https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html

A nudge that fails (throttled, no permission, Lambda unreachable) is logged, reported in the submit's response and
in /healthz, and never raised: the task is already queued, and the controller's 1-minute schedule starts a GPU for
it anyway. Lambda may deliver one event more than once; the controller is idempotent, so that costs one more look.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core import contract, logs
from core.instances import InstanceState, read_instances
from core.observe import read_fleet

log = logging.getLogger("orchestrator.gpu")
ACCEPTED = 202  # Invoke's StatusCode for InvocationType=Event (Lambda API Reference, Invoke: Response Syntax)
SUBMIT = "submit"  # the event's reason


class NudgeStatus(StrEnum):
    NOTIFIED = "notified"  # Lambda accepted the event (202): the controller runs shortly
    FAILED = "failed"  # the invoke failed: the controller's schedule starts a GPU within a minute instead
    SKIPPED = "skipped"  # this request queued nothing (a replay), so there was nothing to tell


@dataclass(frozen=True)
class Nudge:
    """What one submit told the controller."""

    status: NudgeStatus
    task_id: str | None = None
    error: str | None = None
    at_ms: int | None = None

    def view(self) -> dict[str, str]:
        """The submit response's `gpu` field."""
        out = {"controller": self.status.value}
        if self.error is not None:
            out["error"] = self.error
        return out


SKIPPED = Nudge(NudgeStatus.SKIPPED)


def submit_event(task_id: str) -> dict[str, str]:
    """The event the controller gets; it logs the run as trigger "api" with this reason and task id."""
    return {"source": contract.API_EVENT_SOURCE, "reason": SUBMIT, "task_id": task_id}


class ControllerNotifier:
    """`lambda_` is a boto3 Lambda client (injected); `function_name` the controller (CONTROLLER_FUNCTION_NAME).

    Keeps the latest failed nudge of this process for /healthz (in Lambda: of this execution environment)."""

    def __init__(self, lambda_: Any, function_name: str, *, clock: Callable[[], float] = time.time) -> None:
        if not function_name:
            raise ValueError("the controller's function name is required")
        self.lambda_ = lambda_
        self.function_name = function_name
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Nudge | None = None
        self._last_failure: Nudge | None = None

    def notify(self, task_id: str) -> Nudge:
        """One asynchronous invoke; never raises, never waits for the controller."""
        at_ms = int(self._clock() * 1000)
        try:
            out = self.lambda_.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(submit_event(task_id)).encode(),
            )
            status = out.get("StatusCode")
            error = None if status == ACCEPTED else f"Invoke answered StatusCode {status}, not {ACCEPTED}"
        except (ClientError, BotoCoreError) as err:
            error = str(err)
        if error is None:
            nudge = Nudge(NudgeStatus.NOTIFIED, task_id, at_ms=at_ms)
            logs.event(log, "controller_notified", task_id=task_id, function=self.function_name)
        else:
            nudge = Nudge(NudgeStatus.FAILED, task_id, error, at_ms)
            logs.event(
                log,
                "controller_notify_failed",
                logging.WARNING,
                task_id=task_id,
                function=self.function_name,
                error=error,
                note="the controller's 1-minute schedule starts a GPU for the queued task",
            )
        with self._lock:
            self._last = nudge
            if nudge.status is NudgeStatus.FAILED:
                self._last_failure = nudge
        return nudge

    def health(self) -> dict[str, Any]:
        """/healthz's `controller`: the function, whether the latest nudge got through, and the latest failure."""
        with self._lock:
            last, failure = self._last, self._last_failure
        report: dict[str, Any] = {"function": self.function_name, "last_nudge": None, "last_failure": None}
        if last is not None:
            report["last_nudge"] = {**last.view(), "task_id": last.task_id, "at_ms": last.at_ms}
        if failure is not None:
            report["last_failure"] = {**failure.view(), "task_id": failure.task_id, "at_ms": failure.at_ms}
        return report


class GpuStates:
    """The GPU instances /healthz reports. `ec2` a boto3 EC2 client (injected; DescribeInstances only); either
    `instance_ids`, the configured instances (adopt and create modes), or `fleet_name` with an `autoscaling` client
    (fleet mode: the group's members and its warm pool, whatever instances they are right now)."""

    def __init__(
        self, ec2: Any, instance_ids: Sequence[str] = (), *, fleet_name: str | None = None, autoscaling: Any = None
    ) -> None:
        if bool(instance_ids) == bool(fleet_name):
            raise ValueError("give either the GPU instance ids or the fleet's name")
        if fleet_name and autoscaling is None:
            raise ValueError("fleet mode needs an Auto Scaling client")
        self.ec2, self.autoscaling, self.fleet_name = ec2, autoscaling, fleet_name
        self.instance_ids = list(instance_ids)

    def describe(self) -> dict[str, InstanceState]:
        """Current state of every instance (UNKNOWN where EC2 did not say). Raises AWS errors."""
        ids = self.instance_ids
        if self.fleet_name:
            fleet = read_fleet(self.autoscaling, None, self.fleet_name)  # the states below are one read
            ids = [m.instance_id for m in (*fleet.members, *fleet.warm)]
        return {i.instance_id: i.state for i in read_instances(self.ec2, ids)}
