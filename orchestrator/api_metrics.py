"""The API's metrics: one core.metrics.SUBMITS line (dimension `Type`) per task it queues, one SUBMITS_REFUSED line
per submit it refuses. EMF lines on stdout (core.metrics.emit), which Lambda sends to CloudWatch Logs, where the
metrics are extracted on ingestion under METRICS_NAMESPACE
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
No AWS call: a metric never slows or fails a submit.

Refusals are counted where every one of them ends up, the response: the body guard's 413/415 and the schema's
400/422 come from layers before the handler, the type, params and webhook checks from the handler, and the
idempotency conflicts (409) from the store. 401s are not submits (nobody known asked) and 503s are failures, not
refusals. A refusal has no `Type` dimension: an unknown type would make a metric per string a caller sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import contract as c
from core import logs
from core.metrics import SUBMITS, SUBMITS_REFUSED, Metric, emit

log = logging.getLogger("orchestrator.metrics")
REFUSED_STATUSES = frozenset({400, 409, 413, 415, 422})
SUBMIT_PATH = "/tasks"


@dataclass(frozen=True)
class SubmitMetrics:
    """`write`: where the EMF lines go (default stdout); tests pass their own."""

    namespace: str = c.METRICS_NAMESPACE.default or ""
    write: Callable[[str], Any] | None = None

    def accepted(self, task_type: str, task_id: str) -> None:
        self._emit({SUBMITS: 1}, {"Type": task_type}, task_id=task_id)

    def refused(self, status: int) -> None:
        self._emit({SUBMITS_REFUSED: 1}, None, status=status)

    def _emit(self, values: Mapping[Metric, float], dimensions: Mapping[str, str] | None, **properties: Any) -> None:
        try:
            emit(self.namespace, values, dimensions=dimensions, write=self.write, **properties)
        except OSError as err:  # stdout gone: the submit itself is done and stays done
            logs.event(log, "metric_write_failed", logging.WARNING, error=str(err))


class RefusedSubmits:
    """Counts each `POST /tasks` answered with a refusal status (REFUSED_STATUSES). Placed inside the auth guard
    (so an unauthenticated request never counts) and outside the body guard (whose 413 and 415 do)."""

    def __init__(self, app: ASGIApp, metrics: SubmitMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != SUBMIT_PATH:
            await self.app(scope, receive, send)
            return

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REFUSED_STATUSES:
                self.metrics.refused(message["status"])
            await send(message)

        await self.app(scope, receive, watched)
