"""On-node autostop: the adapter stops its own machine after `window_s` with no task, like SkyPilot's autostop.

Precise to one loop turn and free of CloudWatch lag, because the adapter knows when it last held a task. Before it
stops it runs the same blocking checks as `shutdown-gpu-lambda` (core/idle.py: nothing visible/delayed/in flight in
the queue, no live RUNNING or young QUEUED task), read directly. Only the action differs by mode:

- adopt and create modes: it shuts the OS down (`systemctl_poweroff`); the instance is launched with shutdown
  behaviour = stop, so EC2 stops it. It never calls ec2:StopInstances - the GPU role deliberately cannot start or
  stop instances.
- fleet mode: it leaves through the group (adapter/fleet.py `Membership.leave`: protection off, desired capacity
  minus one), which returns it to the warm pool stopped; a bare poweroff would look unhealthy to the group and get
  the instance replaced. Built with `repeat=True`: the group scales in an idle member of its choosing, so if this
  one is still running `recheck_s` later, the checks run again and so does the leave.

The Lambda stays as the backstop for a dead adapter.

Wiring (the adapter's loop, adapter/worker.py):

    autostop = AutoStop.from_env(os.environ, sqs=sqs_client, dynamodb=dynamodb_client)
    while running:
        message = receive()            # long poll
        if message:
            autostop.note_busy()        # a task arrived
            process(message)
            autostop.note_busy()        # ...and ended: the idle window starts now
        else:
            autostop.maybe_stop()       # cheap until the window has passed; then reads the queue and table
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core import contract as c
from core import logs
from core.idle import Policy, idle_blocker, waiting_reason
from core.observe import Sources, observe

log = logging.getLogger("adapter.autostop")


class AutoStopOutcome(StrEnum):
    DISABLED = "DISABLED"  # window <= 0: on-node autostop off, the Lambda alone decides
    WAITING = "WAITING"  # idle, but for less than the window (or a recent check said wait)
    BLOCKED = "BLOCKED"  # window passed, but the shared checks found work waiting or running
    CHECK_FAILED = "CHECK_FAILED"  # could not read the queue/table: never stop on an unknown
    POWERED_OFF = "POWERED_OFF"  # the stop was issued (poweroff, or the leave through the group); see `repeat`


@dataclass(frozen=True)
class Result:
    outcome: AutoStopOutcome
    detail: str = ""


def systemctl_poweroff() -> None:
    """Shut the OS down; EC2 then stops the instance (InstanceInitiatedShutdownBehavior=stop). systemd sends the
    adapter SIGTERM first, which is where it requeues anything it holds."""
    subprocess.run(["systemctl", "poweroff"], check=True, timeout=60)


def shared_checks(
    src: Sources, policy: Policy, wall_clock: Callable[[], float] = time.time, *, fleet: bool = False
) -> Callable[[], str | None]:
    """The Lambda's blocking checks as a callable: None when safe to stop, else the reason not to.

    `fleet`: only waiting work blocks. A task running on another member does not: that member holds its own
    scale-in protection, so the group never picks it, and this idle one leaving costs it nothing. With the whole
    rule, every idle member would stay up as long as the fleet's longest task runs (bench/idle_cost.py's fleet
    day: 1.155x the floor's instance-hours over seeds 1..8 with the whole rule, 0.98x with this one)."""

    def check() -> str | None:
        obs = observe(src, wall_clock(), policy, with_history=False)
        return waiting_reason(obs, policy) if fleet else idle_blocker(obs, policy)

    return check


class AutoStop:
    def __init__(
        self,
        window_s: float,
        *,
        checks: Callable[[], str | None],
        poweroff: Callable[[], None] = systemctl_poweroff,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = 60.0,
        repeat: bool = False,
    ) -> None:
        """`poweroff`: the stop action. `repeat`: after a stop, issue it again (checks first) if this process is still
        running `recheck_s` later; otherwise a stop is issued once and later calls answer POWERED_OFF."""
        self.window_s = window_s
        self._checks = checks
        self._poweroff = poweroff
        self._clock = clock
        # After a blocked or failed check, wait this long before reading AWS again (every loop turn would be
        # a query per long poll for nothing).
        self.recheck_s = recheck_s
        self._idle_since = clock()  # the service starts at boot: a fresh machine gets a full window
        self._next_check = self._idle_since
        self._powered_off = False
        self.repeat = repeat

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        sqs: Any,
        dynamodb: Any,
        poweroff: Callable[[], None] = systemctl_poweroff,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = 60.0,
        fleet: bool = False,
    ) -> AutoStop:
        """The Lambda's policy, read from the same settings (Policy.from_env); a window of 0 or less disables.
        `fleet`: a member of the GPU fleet: only waiting work blocks its leave (shared_checks), and the leave is
        repeated (`repeat`) while the group scales in other idle members instead of this one."""
        policy = Policy.from_env(env)
        src = Sources(
            sqs=sqs,
            dynamodb=dynamodb,
            queue_url=c.TASK_QUEUE_URL.read(env),
            table_name=c.TASK_TABLE_NAME.read(env),
            status_index=c.TASK_STATUS_INDEX.read(env),
        )
        return cls(
            policy.idle_window_s,
            checks=shared_checks(src, policy, fleet=fleet),
            poweroff=poweroff,
            clock=clock,
            recheck_s=recheck_s,
            repeat=fleet,
        )

    def note_busy(self) -> None:
        """Call when a task starts and when it ends: the idle window is measured from the last call."""
        now = self._clock()
        self._idle_since = now
        self._next_check = now

    def idle_for(self) -> float:
        return self._clock() - self._idle_since

    def maybe_stop(self) -> Result:
        """Call once per loop turn while holding no task. Stops at most once (with `repeat`: once per recheck_s)."""
        if self._powered_off:
            return Result(AutoStopOutcome.POWERED_OFF, "already powering off")
        if self.window_s <= 0:
            return Result(AutoStopOutcome.DISABLED)
        now = self._clock()
        idle = now - self._idle_since
        if idle < self.window_s:
            return Result(AutoStopOutcome.WAITING, f"idle {idle:.0f}s < window {self.window_s:.0f}s")
        if now < self._next_check:
            return Result(AutoStopOutcome.WAITING, "last check blocked; rechecking later")
        try:
            blocker = self._checks()
        except Exception as err:  # any read failure: keep running, the Lambda backstop still covers us
            self._next_check = now + self.recheck_s
            return self._log(Result(AutoStopOutcome.CHECK_FAILED, f"{type(err).__name__}: {err}"), idle)
        if blocker is not None:
            self._next_check = now + self.recheck_s
            return self._log(Result(AutoStopOutcome.BLOCKED, blocker), idle)
        self._log(
            Result(AutoStopOutcome.POWERED_OFF, "no task locally for the window and none waiting or running"), idle
        )
        try:
            self._poweroff()
        except Exception as err:
            self._next_check = now + self.recheck_s
            return self._log(
                Result(AutoStopOutcome.CHECK_FAILED, f"poweroff failed: {type(err).__name__}: {err}"), idle
            )
        if self.repeat:
            self._next_check = now + self.recheck_s
            return Result(AutoStopOutcome.POWERED_OFF, "stop issued; checking again later")
        self._powered_off = True
        return Result(AutoStopOutcome.POWERED_OFF, "poweroff issued")

    def _log(self, result: Result, idle: float) -> Result:
        logs.event(
            log,
            "autostop",
            outcome=result.outcome.value,
            detail=result.detail,
            idle_s=round(idle, 1),
            window_s=self.window_s,
        )
        return result
