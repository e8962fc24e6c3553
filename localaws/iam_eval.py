"""IAM policy evaluation for localaws.enforce: which of ALLOW, DENY and IMPLICIT_DENY a set of identity policy
documents (or one permissions boundary) gives an action on a resource with a request context.

What is modelled, exactly: an explicit Deny wins, else an Allow allows, else the request is refused (IAM User Guide,
"Policy evaluation logic", for one account). A statement applies when its Action (or NotAction) matches,
case-insensitively, with `*` and `?` wildcards; its Resource (or NotResource) matches, case-sensitively, with the
same wildcards; and every condition holds. Condition operators: String(Not)Equals, String(Not)EqualsIgnoreCase,
String(Not)Like, Arn(Not)Equals and Arn(Not)Like (wildcards on the whole ARN), Bool, Null, each with ...IfExists;
several keys in an operator and several operators must all hold, several values of one key are alternatives. A key
missing from the request fails every operator but the negated ones (Not...), ...IfExists and Null, as in AWS. Any
other operator (numeric, date, IP, ForAnyValue/ForAllValues) is refused with an error, never guessed. Policy
variables (`${aws:username}`) are not substituted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

ALLOW, DENY, IMPLICIT_DENY = "Allow", "Deny", "ImplicitDeny"


@cache
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _any_match(patterns: Any, value: str, *, ignore_case: bool) -> bool:
    return any(_glob(p, ignore_case).fullmatch(value) for p in _listed(patterns))


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, got: want == got,
    "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
    "StringLike": lambda want, got: bool(_glob(want, False).fullmatch(got)),
    "ArnEquals": lambda want, got: bool(_glob(want, False).fullmatch(got)),
    "ArnLike": lambda want, got: bool(_glob(want, False).fullmatch(got)),
    "Bool": lambda want, got: want.lower() == got.lower(),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, str]) -> bool:
    got = context.get(key.lower())
    if operator == "Null":  # "true": the key is absent
        return all((got is None) == (w.lower() == "true") for w in _listed(wanted))
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    negated = base in _NEGATED
    test = _OPERATORS.get(_NEGATED.get(base, base))
    if test is None:
        raise NotImplementedError(f"condition operator {operator} is not modelled by localaws.iam_eval")
    if got is None:
        return if_exists or negated
    matched = any(test(w, got) for w in _listed(wanted))
    return not matched if negated else matched


def _statement_applies(st: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]) -> bool:
    if "NotAction" in st:
        if _any_match(st["NotAction"], action, ignore_case=True):
            return False
    elif not _any_match(st.get("Action", []), action, ignore_case=True):
        return False
    if "NotResource" in st:
        if _any_match(st["NotResource"], resource, ignore_case=False):
            return False
    elif "Resource" not in st or not _any_match(st["Resource"], resource, ignore_case=False):
        return False
    return all(
        _condition_holds(operator, key, wanted, context)
        for operator, keys in st.get("Condition", {}).items()
        for key, wanted in keys.items()
    )


def evaluate(
    documents: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, str] | None = None
) -> str:
    """ALLOW, DENY (an explicit Deny) or IMPLICIT_DENY for `action` on `resource` under these identity policy
    documents (or one boundary), with these request context keys (names case-insensitive)."""
    ctx = {k.lower(): v for k, v in (context or {}).items()}
    allowed = False
    for document in documents:
        statements = document.get("Statement", [])
        for st in statements if isinstance(statements, list) else [statements]:
            if _statement_applies(st, action, resource, ctx):
                if st.get("Effect") == "Deny":
                    return DENY
                allowed = True
    return ALLOW if allowed else IMPLICIT_DENY
