"""The orchestrator's view of the task type registry: core/task_types.py owns loading and param validation;
this turns its errors into the service's `InvalidTask` (HTTP 422) and describes the types to callers
(`GET /types`) without what runs them (argv, url)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from core.task_types import Registry, TaskTypeError, load_registry

from .service import InputsOf, InvalidTask, Validator


def load(path: str | os.PathLike[str] | None = None) -> Registry:
    """Loaded once, at app creation (a malformed registry fails startup, not a request).
    `path`, else $TASK_TYPES_FILE, else the task_types.json shipped in core."""
    return load_registry(path)


def registry_validator(path: str | os.PathLike[str] | None = None, *, registry: Registry | None = None) -> Validator:
    found = registry if registry is not None else load(path)

    def validate(task_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return found.validate(task_type, params)
        except TaskTypeError as err:
            raise InvalidTask(str(err)) from None

    return validate


def inputs_of(registry: Registry) -> InputsOf:
    def names(task_type: str) -> Sequence[str]:
        found = registry.types.get(task_type)
        return found.s3_inputs() if found is not None else ()

    return names


def describe(registry: Registry) -> list[dict[str, Any]]:
    """What a caller needs to submit each type: its params and their rules, sorted by name."""
    out = []
    for name in sorted(registry.types):
        spec = registry.types[name]
        params = []
        for p in spec.params.values():
            param: dict[str, Any] = {"name": p.name, "type": p.type, "required": p.required}
            for key in ("pattern", "min", "max", "max_length"):
                if getattr(p, key) is not None:
                    param[key] = getattr(p, key)
            if p.s3_input:
                param["s3_input"] = True  # takes a key from POST /uploads
            params.append(param)
        out.append({"name": name, "description": spec.description, "timeout_s": spec.timeout_s, "params": params})
    return out
