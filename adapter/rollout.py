"""Rollout to a running instance without an SSM agent association: between tasks, compare the SSM bundle parameter
with the bundle this process runs; when it changed, the adapter exits with EXIT_NEW_BUNDLE, systemd restarts the
unit (Restart=always), and ExecStartPre (install.sh) installs the new bundle before `python3 -m adapter` starts.

A stopped instance gets the change on its next boot through the same ExecStartPre, so both paths run one installer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import logs

log = logging.getLogger("adapter.rollout")

# Distinct from a crash (1) and a clean stop (0), so the journal says why the unit restarted. EX_TEMPFAIL.
EXIT_NEW_BUNDLE = 75


class RolloutWatch:
    """`changed()` is cheap: at most one GetParameter per `every_s`; errors keep the running bundle."""

    def __init__(
        self,
        ssm: Any,
        *,
        param_name: str,
        running_bundle: str,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ssm = ssm
        self.param_name = param_name
        self.running_bundle = running_bundle
        self.every_s = every_s
        self._clock = clock
        self._next_check = clock()  # the first idle turn checks: a restart loop of old bundles ends fast

    def changed(self) -> str | None:
        """The new bundle URI when the parameter no longer names the running bundle, else None."""
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.every_s
        try:
            wanted = self.ssm.get_parameter(Name=self.param_name)["Parameter"]["Value"]
        except Exception as err:  # SSM unreachable: keep serving with what we have, try again next interval
            logs.event(log, "rollout_check_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            return None
        if wanted == self.running_bundle:
            return None
        logs.event(log, "new_bundle", running=self.running_bundle, wanted=wanted)
        return str(wanted)
