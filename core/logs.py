"""Structured logs for every program: one JSON object per line on stdout, `event` naming what happened.

`event(log, "claimed", attempt=2)` -> {"ts": ..., "level": "info", "logger": ..., "task_id": ..., "event": "claimed",
"attempt": 2}. The adapter keeps it in journald, the Lambda and the orchestrator in CloudWatch Logs: the same shape
everywhere, so one query reads them all. The current task lives in a ContextVar set around each message
(`task_scope`), so nothing has to thread it through calls; lines written outside a task carry `"task_id": null`,
which keeps every line the same shape.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

current_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_task", default=None)
_static: dict[str, Any] = {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "task_id": getattr(record, "task_id", None) or current_task.get(),
            **_static,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of each line (a Lambda's runtime, or a test, may swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def setup(level: str = "INFO", *, loggers: tuple[str, ...] = ("",), **static_fields: Any) -> None:
    """JSON lines on stdout for `loggers` ("": the whole process, as the adapter wants); `static_fields` (e.g.
    worker=...) go on every line. A program that shares its process (the Lambda runtime; tests) names its own
    loggers instead, which then stop passing their lines on to the root's handlers."""
    _static.clear()
    _static.update(static_fields)
    handler = _Stdout()
    handler.setFormatter(JsonFormatter())
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = name == ""
    # botocore's own debug chatter is not JSON and not ours
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, exc: bool = False, **fields: Any) -> None:
    """`event(log, "claimed", attempt=2)` -> {"event": "claimed", "attempt": 2, "task_id": ..., ...}."""
    logger.log(level, name, extra={"fields": fields}, exc_info=exc)


@contextmanager
def task_scope(task_id: str | None) -> Iterator[None]:
    token = current_task.set(task_id)
    try:
        yield
    finally:
        current_task.reset(token)
