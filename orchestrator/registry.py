"""The orchestrator's view of the task type registry: core/task_types.py owns loading and param validation;
this only turns its errors into the service's `InvalidTask` (HTTP 422)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from core.task_types import TaskTypeError, load_registry

from .service import InvalidTask, Validator


def registry_validator(path: str | os.PathLike[str] | None = None) -> Validator:
    """Loaded once, at app creation (a malformed registry fails startup, not a request).
    `path`, else $TASK_TYPES_FILE, else the task_types.json shipped in core."""
    registry = load_registry(path)

    def validate(task_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return registry.validate(task_type, params)
        except TaskTypeError as err:
            raise InvalidTask(str(err)) from None

    return validate
