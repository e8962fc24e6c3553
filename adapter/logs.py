"""Structured logs: one JSON object per line on stdout (journald keeps it), with `task_id` on every line.

The current task lives in a ContextVar set around each message, so nothing has to thread it through calls; lines
written outside a task carry `"task_id": null`, which keeps every line the same shape for queries.
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
_worker_id: str | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "task_id": getattr(record, "task_id", None) or current_task.get(),
            "worker": _worker_id,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(worker_id: str, level: str = "INFO") -> None:
    global _worker_id
    _worker_id = worker_id
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
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
