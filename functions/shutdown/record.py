"""The controller's one JSON line per run, in both modes: what it was asked, read, decided and did."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from core import logs
from core.idle import Policy

from .settings import LOGGER

log = logging.getLogger(LOGGER)


def new_record(policy: Policy, *, trigger: str | None, cause: Mapping[str, Any] | None, **mode: Any) -> dict[str, Any]:
    """The record's head: the trigger, the policy, what this mode acts on (`mode`) and, if any, the event's cause."""
    record: dict[str, Any] = {"trigger": trigger, "policy": asdict(policy), **mode}
    if cause:
        record["cause"] = dict(cause)
    return record


@contextmanager
def logged(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Log `record` once when the block ends, an exception's type and text in it (at ERROR) when it raised."""
    try:
        yield record
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        logs.event(log, "gpu_idle_decision", logging.ERROR if "error" in record else logging.INFO, **record)
