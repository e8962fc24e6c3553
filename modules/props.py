"""Checks of construct props against AWS's limits, run when a construct is created.

A bad value fails synth before any resource is built, with one line naming the construct (its node path), the prop
and the limit: `gpu-orchestrator-sqs/tasks: visibility_timeout_seconds=50000 is outside 0..43200 (SQS
VisibilityTimeout)`. Unresolved tokens (another resource's name or ARN) are skipped: only Terraform knows them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, NoReturn

from cdktf import Token
from constructs import IConstruct

# SQS quotas (SQS Developer Guide, quotas-queues): a queue name is up to 80 characters of A-Za-z0-9-_ (a FIFO queue's
# ends in .fifo; every queue here is standard). Several constructs name queues: the task queues, a function's
# dead-letter queue, the queue an alarm watches.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
QUEUE_NAME_RULE = "1-80 characters of A-Za-z0-9_- (SQS queue name)"


class ConstructPropError(ValueError):
    """A prop breaks an AWS limit. str() is one line: `<node path>: <prop>=<value> <problem> (<limit>)`."""

    def __init__(self, scope: IConstruct | str, prop: str, message: str) -> None:
        self.path = scope if isinstance(scope, str) else scope.node.path
        self.prop = prop
        super().__init__(f"{self.path}: {message}")


def fail(scope: IConstruct | str, prop: str, value: Any, problem: str) -> NoReturn:
    raise ConstructPropError(scope, prop, f"{prop}={value!r} {problem}")


# How cdktf encodes what only Terraform knows, in one place: an unresolved string is text holding TOKEN_MARKER
# (`${TfToken[TOKEN.9]}`, alone or inside longer text, as TOKEN matches it; a list's `#{TfToken[...]}`), an unresolved
# number a float. Text without the marker, and ints, are known without asking the jsii runtime: a round trip each,
# 172 of them per synth. tests/test_props.py holds the pinned cdktf to this; modules/iam.py orders tokens by TOKEN.
TOKEN_MARKER = "TfToken["
TOKEN = re.compile(r"\$\{TfToken\[TOKEN\.\d+\]\}")


def _known(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return TOKEN_MARKER not in value or not Token.is_unresolved(value)
    if isinstance(value, float):
        return not Token.is_unresolved(value)
    if isinstance(value, list) and len(value) == 1 and TOKEN_MARKER in str(value[0]):  # a list token
        return not Token.is_unresolved(value)
    return True  # an int (a number token is never one), another list, a mapping


def check(scope: IConstruct | str, prop: str, value: Any, ok: bool, problem: str) -> None:
    """A rule that no range, set or pattern expresses (a prop against another, a reserved prefix...)."""
    if _known(value) and not ok:
        fail(scope, prop, value, problem)


def check_range(scope: IConstruct | str, prop: str, value: int | None, low: int, high: int | None, limit: str) -> None:
    """low <= value <= high (high None: no upper bound). None means "not set" and passes."""
    if not _known(value):
        return
    assert value is not None
    if value < low or (high is not None and value > high):
        fail(scope, prop, value, f"is outside {low}..{'' if high is None else high} ({limit})")


def check_in(scope: IConstruct | str, prop: str, value: Any, allowed: Collection[Any], limit: str) -> None:
    if _known(value) and value not in allowed:
        fail(scope, prop, value, f"is not one of {', '.join(map(str, allowed))} ({limit})")


def check_pattern(scope: IConstruct | str, prop: str, value: str | None, pattern: re.Pattern[str], rule: str) -> None:
    """The whole value matches `pattern`; `rule` says the same in words, with its source."""
    if _known(value) and value is not None and not pattern.fullmatch(value):
        fail(scope, prop, value, f"is not {rule}")


def check_actions(scope: IConstruct | str, actions: Iterable[str], *services: str) -> tuple[str, ...]:
    """A grant's actions: at least one, each of the construct's own service(s) (`sqs:SendMessage` on a queue)."""
    actions = tuple(actions)
    if not actions or any(a.split(":", 1)[0] not in services or ":" not in a for a in actions):
        prefixes = " or ".join(f"{s}:*" for s in services)
        fail(scope, "actions", actions, f"must be one or more {prefixes} actions (the construct's own service)")
    return actions
