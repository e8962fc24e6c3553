"""Make sure the GPU instance(s) are starting when work arrives.

One synchronous pass per submit: DescribeInstances, StartInstances for the stopped ones. An instance that is
`stopping` cannot be started yet (EC2 answers IncorrectInstanceState), so the pass hands it to one background thread
that retries with backoff until the instance reaches `stopped` and can be started, or a bounded deadline passes.
The POST never waits for that loop. If the deadline passes (or this process dies), the shutdown Lambda, which runs
every 5 minutes, is the backstop: it starts a stopped instance while the queue holds messages.

With several instance ids, every configured instance is started: they all pull from the same queue, and the
shutdown Lambda stops each one that sits idle. Scaling out is a config change (GPU_INSTANCE_IDS), not a rewrite.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core import logs
from core.instances import Change, InstanceState, change_state, read_instances

log = logging.getLogger("orchestrator.gpu")


@dataclass(frozen=True)
class StartRetry:
    """Backoff for the `stopping` retry loop. A g-class instance usually needs 1-3 minutes to stop."""

    first_delay_s: float = 2.0
    factor: float = 2.0
    max_delay_s: float = 20.0
    deadline_s: float = 600.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_delay_s)


@dataclass(frozen=True)
class Plan:
    start: list[str]  # stopped: start now
    wait: list[str]  # stopping (or state unknown): retry later
    broken: list[str]  # terminated / shutting-down: nothing we can do, an operator must replace the id


def plan(states: Mapping[str, InstanceState]) -> Plan:
    """Pure decision: what to do with each instance given its state."""
    start = [i for i, s in states.items() if s is InstanceState.STOPPED]
    wait = [i for i, s in states.items() if s in (InstanceState.STOPPING, InstanceState.UNKNOWN)]
    broken = [i for i, s in states.items() if s in (InstanceState.SHUTTING_DOWN, InstanceState.TERMINATED)]
    return Plan(start, wait, broken)


class GpuStarter:
    """`ec2` is a boto3 EC2 client (injected); `instance_ids` the configured GPU instances."""

    def __init__(
        self,
        ec2: Any,
        instance_ids: Sequence[str],
        policy: StartRetry = StartRetry(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not instance_ids:
            raise ValueError("at least one GPU instance id is required")
        self.ec2 = ec2
        self.instance_ids = list(instance_ids)
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = 0.0
        self._generation = 0

    def describe(self) -> dict[str, InstanceState]:
        """Current state of every configured instance (UNKNOWN where EC2 did not say)."""
        return {i.instance_id: i.state for i in read_instances(self.ec2, self.instance_ids)}

    def ensure_started(self) -> dict[str, InstanceState]:
        """One pass now; anything still not startable goes to the background retry. Never raises: the task is
        already queued, and a failure here is retried in the background (and backstopped by the Lambda)."""
        states = self._attempt()
        if states is None or plan(states).wait:
            self._retry_in_background()
        return states or dict.fromkeys(self.instance_ids, InstanceState.UNKNOWN)

    def retrying(self) -> bool:
        with self._lock:
            return self._thread is not None

    def join(self, timeout: float) -> bool:
        """Wait for the background retry to end (tests, shutdown). True if no retry is running afterwards."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.retrying()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.join(timeout)

    # -- internals -----------------------------------------------------------------------------------------------
    def _attempt(self) -> dict[str, InstanceState] | None:
        """Describe, start the stopped ones. Returns the states after acting, or None if EC2 could not be asked."""
        step = "describe"
        try:
            states = self.describe()
            todo = plan(states)
            for instance_id in todo.broken:
                logs.event(
                    log,
                    "gpu_instance_unusable",
                    logging.ERROR,
                    instance_id=instance_id,
                    state=states[instance_id].value,
                )
            if todo.start:
                step = "start"
                self._start(todo.start, states)
            return states
        except (ClientError, BotoCoreError) as err:
            logs.event(log, f"gpu_{step}_failed", logging.WARNING, error=str(err))
            return None

    def _start(self, instance_ids: list[str], states: dict[str, InstanceState]) -> None:
        for result in change_state(self.ec2, Change.START, instance_ids):
            if result.refused is None:
                states[result.instance_id] = InstanceState(result.current or InstanceState.UNKNOWN)
                logs.event(log, "gpu_start_requested", instance_id=result.instance_id, state=result.current)
            else:
                # Described as stopped, but it is mid-transition again (or gone): treat as stopping and retry.
                states[result.instance_id] = InstanceState.STOPPING
                logs.event(log, "gpu_start_refused", instance_id=result.instance_id, error=result.refused)

    def _retry_in_background(self) -> None:
        with self._lock:
            # Every request that finds the GPU not startable pushes the deadline out and bumps the generation;
            # one thread serves them all. The thread only exits under this lock, after an attempt that began after
            # the latest request, so no request's need can fall between a finishing thread and a new one.
            self._deadline = self._clock() + self.policy.deadline_s
            self._generation += 1
            if self._stop.is_set() or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._retry_loop, name="gpu-start-retry", daemon=True)
            self._thread.start()

    def _retry_loop(self) -> None:
        try:
            for delay in self.policy.delays():
                with self._lock:
                    remaining = self._deadline - self._clock()
                    seen = self._generation
                    if remaining <= 0:
                        self._thread = None
                        logs.event(
                            log,
                            "gpu_start_gave_up",
                            logging.ERROR,
                            instance_ids=self.instance_ids,
                            note="the shutdown Lambda's next run starts it while the queue is not empty",
                        )
                        return
                if self._stop.wait(min(delay, remaining)):
                    return
                states = self._attempt()
                if states is not None and not plan(states).wait:
                    with self._lock:
                        if self._generation == seen:
                            self._thread = None
                            logs.event(log, "gpu_start_retry_done", states={k: v.value for k, v in states.items()})
                            return
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
