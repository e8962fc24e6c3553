"""`GET /cost?since=7d`: the cost report (core/cost.py) for one caller.

An admin (orchestrator/identity.py: ORCHESTRATOR_ADMIN_ARNS, the admin alias, bearer mode's one caller) gets every
task and the idle overhead; anyone else only their own tasks and no idle overhead: what the GPUs were billed for
beyond the tasks is the environment's, not one caller's. Without a hosts table (HOSTS_TABLE_NAME unset) the idle
overhead is unknown, and the report says so rather than showing zero.

`since`: a duration back from now (`90s`, `30m`, `12h`, `7d`, `2w`) or an ISO 8601 date or time (`2026-01-01`,
`2026-01-01T12:00:00Z`; without an offset it is UTC), not in the future. Anything else is 422 `invalid_since`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from core import logs
from core.contract import HOSTS_TABLE_NAME
from core.cost import CostReport, ReportScope, build_report, finished_since
from core.hosts import HostStore, RunInterval
from core.store import TaskStore
from core.tasks import now_ms

from .identity import Caller
from .service import ApiError

log = logging.getLogger("orchestrator.costs")
AwsError = (ClientError, BotoCoreError)
DEFAULT_SINCE = "7d"
SINCE_MAX_CHARS = 64
_DURATION = re.compile(r"^([1-9][0-9]{0,8})([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
NOT_YOURS = "withheld: idle overhead is the environment's, not one caller's (an admin's report shows it)"
NO_HOSTS = f"unknown: {HOSTS_TABLE_NAME.name} is not set, so the billed running intervals cannot be read"
NO_CLIENT = f"unknown: this service was given no DynamoDB client to read {HOSTS_TABLE_NAME.name} with"


def parse_since(raw: str, at_ms: int) -> int:
    """The start of the report's window in epoch ms; ValueError (one line, what is wrong) for anything else."""
    text = raw.strip()
    found = _DURATION.match(text)
    since = at_ms - int(found.group(1)) * _UNIT_MS[found.group(2)] if found else _iso_ms(text)
    if since < 0:
        raise ValueError(f"{raw!r} is before 1970")
    if since > at_ms:
        raise ValueError(f"{raw!r} is in the future")
    return since


def _iso_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)  # a date alone is its midnight
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 12h, 7d, 2w) nor an ISO date or time (2026-01-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, kw_only=True)
class CostService:
    """`store` reads the tasks, `hosts` the billed running intervals (None: `hosts_table`, HOSTS_TABLE_NAME, is
    unset, or no client to read it came with the app's Clients), `hourly_usd` is GPU_HOURLY_USD (None: unset)."""

    store: TaskStore
    hosts: HostStore | None
    hosts_table: str | None
    hourly_usd: float | None

    def report(self, since: str, caller: Caller, *, at_ms: int | None = None) -> CostReport:
        until = now_ms() if at_ms is None else at_ms
        try:
            start = parse_since(since, until)
        except ValueError as err:
            raise ApiError(422, "invalid_since", f"since: {err}") from None
        try:
            tasks = [t for t in finished_since(self.store, start) if caller.owns(t.submitted_by)]
        except AwsError as err:
            logs.event(log, "cost_tasks_read_failed", logging.ERROR, error=str(err))
            raise ApiError(503, "store_unavailable", "could not read the tasks; retry") from None
        intervals, note = self._intervals(start, caller)
        return build_report(
            tasks,
            intervals,
            since_ms=start,
            until_ms=until,
            hourly_usd=self.hourly_usd,
            scope=ReportScope.ALL if caller.admin else ReportScope.OWN,
            overhead_note=note,
        )

    def _intervals(self, since_ms: int, caller: Caller) -> tuple[list[RunInterval] | None, str | None]:
        if not caller.admin:
            return None, NOT_YOURS
        if self.hosts is None:
            return None, NO_CLIENT if self.hosts_table else NO_HOSTS
        try:
            return list(self.hosts.intervals_since(since_ms)), None
        except AwsError as err:
            logs.event(log, "cost_hosts_read_failed", logging.ERROR, error=str(err))
            raise ApiError(503, "hosts_unavailable", "could not read the GPU hosts table; retry") from None
