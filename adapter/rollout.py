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
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from core import logs

from .every import Every

log = logging.getLogger("adapter.rollout")

# Distinct from a crash (1) and a clean stop (0), so the journal says why the unit restarted. EX_TEMPFAIL.
EXIT_NEW_BUNDLE = 75


@dataclass(eq=False)  # a service object: compared by identity
class RolloutWatch:
    """`changed()` is cheap: at most two GetParameter calls per `every_s`; errors keep what runs.

    Watches the bundle parameter against ADAPTER_BUNDLE_URI and, when `config_param` is given, the config parameter
    (a JSON object of env vars) against the environment this process started with: a config-only change needs the
    same restart, since install.sh writes the env file systemd starts the adapter with."""

    ssm: Any
    _: KW_ONLY
    param_name: str
    running_bundle: str
    config_param: str | None = None
    running_env: Mapping[str, str] = field(default_factory=dict)
    every_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _due: Every = field(init=False)

    def __post_init__(self) -> None:
        # Not at once: if installing the new bundle keeps failing, install.sh keeps the old one, and this check
        # would restart the unit after every boot; waiting `every_s` caps that loop at one restart per interval.
        self._due = Every(self.every_s, clock=self.clock, wait_first=True)
        self.running_env = dict(self.running_env)  # a snapshot: the environment this process started with

    def changed(self) -> str | None:
        """Why a restart is due (a new bundle, or config keys that differ), else None."""
        if not self._due.due():
            return None
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
