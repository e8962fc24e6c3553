"""The task type registry: the only mapping from a task's `type` to what runs on the GPU instance.

`task_types.json` ships in the adapter bundle; the orchestrator loads the same file to reject bad submissions before
they are queued, and the adapter validates again before running (the queue is not a trust boundary: anything with
sqs:SendMessage could have written the message). Params become whole, separate argv items - never a shell string -
so a value like `; rm -rf /` is one harmless argument. A string param without a `pattern` may not start with `-`
(it would be an option to the command) unless it says `"allow_leading_dash": true` (the default for http types,
whose params are JSON fields). Every param value must be storable in DynamoDB: UTF-8 text, numbers within its range
and 38 digits. At load, a param named like a builtin and an argv placeholder that names nothing are errors.

Stdlib only: this ships to the instance and is imported by the orchestrator.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PATH = Path(__file__).with_name("task_types.json")
KINDS = ("command", "http")
PARAM_TYPES = ("string", "integer", "number", "boolean")
DEFAULT_MAX_LENGTH = 4096  # a string param without max_length still may not be unbounded
# Adapter-controlled values usable anywhere inside an argv item; params may only be whole items.
BUILTINS = ("python", "workloads")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# What a DynamoDB number can hold (params are stored in the task item): magnitudes outside this range, or more
# significant digits than this, fail the write long after the request was accepted.
DYNAMO_MIN = Decimal("1E-130")
DYNAMO_MAX = Decimal("9.9999999999999999999999999999999999999E+125")
DYNAMO_DIGITS = 38


class TaskTypeError(ValueError):
    """Base for everything a caller should answer with 'invalid task' (HTTP 422, or the DLQ path)."""


class UnknownTaskType(TaskTypeError):
    pass


class InvalidParams(TaskTypeError):
    def __init__(self, type_name: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"invalid params for {type_name}: " + "; ".join(errors))


class RegistryError(ValueError):
    """task_types.json itself is malformed: a deploy-time bug, raised at load."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    required: bool
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    s3_input: bool = False  # a key under inputs/ that the adapter downloads; the command sees the local path
    # Without a pattern, a value starting with '-' is refused: as an argv item it would be read as an option
    # (`--output=/etc/x`). A type whose command takes such values, or whose params never reach argv, says so.
    allow_leading_dash: bool = False

    def check(self, value: Any) -> str | None:
        """None when `value` fits, else a reason."""
        if self.type == "boolean":
            return None if isinstance(value, bool) else f"{self.name}: expected boolean"
        if self.type == "string":
            if not isinstance(value, str):
                return f"{self.name}: expected string"
            limit = self.max_length if self.max_length is not None else DEFAULT_MAX_LENGTH
            if len(value) > limit:
                return f"{self.name}: longer than {limit}"
            if "\x00" in value:
                return f"{self.name}: contains NUL"  # cannot be an argv item
            bad_at = _not_utf8_at(value)
            if bad_at is not None:  # DynamoDB, SQS and argv all need UTF-8; a lone surrogate has none
                return f"{self.name}: not valid UTF-8 text (lone surrogate at character {bad_at})"
            if self.pattern is not None:
                if not re.fullmatch(self.pattern, value):
                    return f"{self.name}: does not match {self.pattern}"
            elif value.startswith("-") and not self.allow_leading_dash:
                return f"{self.name}: may not start with '-' (it would be read as an option)"
            return None
        # bool is an int subclass in Python; JSON true is not a number
        numeric = (int,) if self.type == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"{self.name}: expected {self.type}"
        if value != value or value in (float("inf"), float("-inf")):
            return f"{self.name}: not a finite number"
        if self.min is not None and value < self.min:
            return f"{self.name}: below minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.name}: above maximum {self.max:g}"
        return _dynamo_number_problem(self.name, value)


def _not_utf8_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def _dynamo_number_problem(name: str, value: int | float) -> str | None:
    # Checked on the decimal text DynamoDB would get: str() of a float (as the store writes it), the int itself.
    if isinstance(value, int) and abs(value) > 10 ** (DYNAMO_DIGITS * 4):
        return f"{name}: too large for DynamoDB (at most {DYNAMO_MAX:E} in magnitude)"  # spares huge-int work
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if number.is_zero():
        return None
    if abs(number) < DYNAMO_MIN:
        return f"{name}: too small for DynamoDB (non-zero numbers are at least {DYNAMO_MIN:E} in magnitude)"
    if abs(number) > DYNAMO_MAX:
        return f"{name}: too large for DynamoDB (at most {DYNAMO_MAX:E} in magnitude)"
    # An int's trailing zeros count: boto3 will not round 10**40 to 38 digits, it refuses the write.
    if len(number.as_tuple().digits) > DYNAMO_DIGITS:
        return f"{name}: more than {DYNAMO_DIGITS} significant digits (DynamoDB's precision)"
    return None


@dataclass(frozen=True)
class TaskType:
    name: str
    kind: str
    description: str
    params: Mapping[str, ParamSpec]
    timeout_s: int
    argv: tuple[str, ...] = ()
    url: str | None = None

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(params, Mapping):
            raise InvalidParams(self.name, ["params must be an object"])
        errors = [f"{k}: unexpected param" for k in params if k not in self.params]
        for spec in self.params.values():
            if spec.name not in params:
                if spec.required:
                    errors.append(f"{spec.name}: required")
                continue
            reason = spec.check(params[spec.name])
            if reason:
                errors.append(reason)
        if errors:
            raise InvalidParams(self.name, errors)
        return {k: params[k] for k in self.params if k in params}

    def s3_inputs(self) -> list[str]:
        return [p.name for p in self.params.values() if p.s3_input]

    def argv_for(self, params: Mapping[str, Any], builtins: Mapping[str, str]) -> list[str]:
        """The command line: builtins replaced inside items, each `{param}` item replaced by exactly one item."""
        out = []
        for item in self.argv:
            whole = _PLACEHOLDER.fullmatch(item)
            if whole and whole.group(1) in self.params:
                out.append(_argv_text(params[whole.group(1)]))
            else:
                out.append(_PLACEHOLDER.sub(lambda m: builtins[m.group(1)], item))
        return out


def _argv_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Registry:
    types: Mapping[str, TaskType] = field(default_factory=dict)

    def get(self, name: str) -> TaskType:
        found = self.types.get(name) if isinstance(name, str) else None
        if found is None:
            raise UnknownTaskType(f"unknown task type {name!r}")
        return found

    def validate(self, type_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The params to store/run (only declared ones), or TaskTypeError."""
        return self.get(type_name).validate(params)


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Load and check the registry: `path`, else $TASK_TYPES_FILE, else the bundled task_types.json."""
    source = Path(path or os.environ.get("TASK_TYPES_FILE") or DEFAULT_PATH)
    try:
        doc = json.loads(source.read_text())
    except (OSError, ValueError) as err:
        raise RegistryError(f"{source}: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("types"), dict):
        raise RegistryError(f'{source}: expected {{"types": {{...}}}}')
    return Registry({name: _parse_type(name, raw) for name, raw in doc["types"].items()})


def _parse_type(name: str, raw: Any) -> TaskType:
    def bad(why: str) -> RegistryError:
        return RegistryError(f"task type {name!r}: {why}")

    if not isinstance(raw, dict):
        raise bad("must be an object")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise bad(f"kind must be one of {KINDS}")
    timeout = raw.get("timeout_s")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise bad("timeout_s must be a positive integer")
    params = {p: _parse_param(name, kind, p, spec) for p, spec in (raw.get("params") or {}).items()}
    if kind == "command":
        argv = raw.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise bad("a command type needs argv: a non-empty list of strings")
        for index, item in enumerate(argv):
            for found in _PLACEHOLDER.finditer(item):
                ref = found.group(1)
                if ref in BUILTINS:
                    continue
                if ref not in params:
                    # argv_for would fail on it at run time, on the instance: say exactly where it is now
                    raise bad(
                        f"argv names undeclared param {ref!r} (argv[{index}] {item!r}, offset {found.start()}); "
                        f"declare it or use a builtin {BUILTINS}"
                    )
                if item != "{" + ref + "}":
                    raise bad(f"param {ref!r} must be a whole argv item, not part of {item!r}")
                if not params[ref].required:
                    raise bad(f"argv param {ref!r} must be required (an absent value has no argv item)")
        return TaskType(name, kind, str(raw.get("description", "")), params, timeout, argv=tuple(argv))
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
        raise bad("an http type needs url http://127.0.0.1:PORT/... (the local inference server only)")
    return TaskType(name, kind, str(raw.get("description", "")), params, timeout, url=url)


def _parse_param(type_name: str, kind: str, name: str, raw: Any) -> ParamSpec:
    def bad(why: str) -> RegistryError:
        return RegistryError(f"task type {type_name!r}, param {name!r}: {why}")

    if name in BUILTINS:
        # `{python}` in argv would be the param's value (a whole item) or the builtin (inside an item)
        raise bad(f"a param may not be named like a builtin placeholder {BUILTINS}")
    if not isinstance(raw, dict) or raw.get("type") not in PARAM_TYPES:
        raise bad(f"type must be one of {PARAM_TYPES}")
    # An http type's params are JSON fields of the request it sends, never argv items: no option to confuse.
    allow_leading_dash = raw.get("allow_leading_dash", kind == "http")
    if not isinstance(allow_leading_dash, bool):
        raise bad("allow_leading_dash must be true or false")
    pattern = raw.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            raise bad(f"pattern does not compile: {err}") from None
    spec = ParamSpec(
        name=name,
        type=raw["type"],
        required=bool(raw.get("required", False)),
        pattern=pattern,
        min=raw.get("min"),
        max=raw.get("max"),
        max_length=raw.get("max_length"),
        s3_input=bool(raw.get("s3_input", False)),
        allow_leading_dash=allow_leading_dash,
    )
    if spec.s3_input and (spec.type != "string" or not spec.pattern or not spec.pattern.startswith("inputs/")):
        raise bad("an s3_input param must be a string whose pattern starts with 'inputs/'")
    return spec
