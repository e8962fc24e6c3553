"""The timed chores the loop does on its own turns (the liveness write, the rollout check, the DLQ sweep, the
termination hook's heartbeat while leaving): each is due at most once per interval of a monotonic clock, and is done
by the loop's thread, never by a thread of its own, so a loop that hangs stops doing them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Every:
    """`due()` is True at most once per `every_s` by `clock`, and a new interval starts then: a chore that fails
    waits a whole interval too, so it costs at most one try per interval. The first is due at once, or, with
    `wait_first`, one interval after this is made."""

    def __init__(
        self, every_s: float, *, clock: Callable[[], float] = time.monotonic, wait_first: bool = False
    ) -> None:
        self.every_s = every_s
        self._clock = clock
        self._next = clock() + every_s if wait_first else -math.inf

    def due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True
