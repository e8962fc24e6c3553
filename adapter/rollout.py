"""Rollout to a running instance without an SSM agent association: between tasks, compare the SSM bundle parameter
with the bundle this process runs (and the config parameter with its environment); when either changed, the adapter
exits with EXIT_NEW_BUNDLE, systemd restarts the
unit (Restart=always), and ExecStartPre (install.sh) installs the new bundle before `python3 -m adapter` starts.

A stopped instance gets the change on its next boot through the same ExecStartPre, so both paths run one installer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from core import logs

log = logging.getLogger("adapter.rollout")

# Distinct from a crash (1) and a clean stop (0), so the journal says why the unit restarted. EX_TEMPFAIL.
EXIT_NEW_BUNDLE = 75


class RolloutWatch:
    """`changed()` is cheap: at most two GetParameter calls per `every_s`; errors keep what runs.

    Watches the bundle parameter against ADAPTER_BUNDLE_URI and, when `config_param` is given, the config parameter
    (a JSON object of env vars) against the environment this process started with: a config-only change needs the
    same restart, since install.sh writes the env file systemd starts the adapter with."""

    def __init__(
        self,
        ssm: Any,
        *,
        param_name: str,
        running_bundle: str,
        config_param: str | None = None,
        running_env: Mapping[str, str] | None = None,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ssm = ssm
        self.param_name = param_name
        self.running_bundle = running_bundle
        self.config_param = config_param
        self.running_env = dict(running_env or {})
        self.every_s = every_s
        self._clock = clock
        # Not at once: if installing the new bundle keeps failing, install.sh keeps the old one, and this check
        # would restart the unit after every boot; waiting `every_s` caps that loop at one restart per interval.
        self._next_check = clock() + every_s

    def changed(self) -> str | None:
        """Why a restart is due (a new bundle, or config keys that differ), else None."""
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.every_s
        try:
            wanted = self.ssm.get_parameter(Name=self.param_name)["Parameter"]["Value"]
            config = (
                json.loads(self.ssm.get_parameter(Name=self.config_param)["Parameter"]["Value"])
                if self.config_param
                else {}
            )
        except Exception as err:  # SSM unreachable: keep serving with what we have, try again next interval
            logs.event(log, "rollout_check_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            return None
        if wanted != self.running_bundle:
            logs.event(log, "new_bundle", running=self.running_bundle, wanted=wanted)
            return f"bundle {wanted}"
        drift = sorted(k for k, v in config.items() if self.running_env.get(k) != str(v))
        if drift:
            logs.event(log, "new_config", keys=drift)  # names only: values may be sensitive
            return f"config {', '.join(drift)}"
        return None
