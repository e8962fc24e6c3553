"""A readable summary of `terraform show -json` plans, one section per stack, for ops to review.

Pure functions over the documented plan JSON format (format_version 1.x): resource_changes[].change.actions and
output_changes. Replacements and destroys of stateful resources are called out at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Resources whose loss loses data or state; any replace/delete of one of these is called out.
STATEFUL_TYPES = frozenset({"aws_dynamodb_table", "aws_sqs_queue", "aws_s3_bucket", "aws_s3_object"})


@dataclass
class StackSummary:
    stack: str
    create: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    outputs_changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.create or self.update or self.replace or self.delete or self.outputs_changed)


def _label(change: Mapping[str, Any]) -> str:
    after = (change.get("change") or {}).get("after") or {}
    before = (change.get("change") or {}).get("before") or {}
    name = next(
        (
            v
            for k in ("name", "bucket", "function_name", "alarm_name", "key")
            for v in (after.get(k), before.get(k))
            if isinstance(v, str)
        ),
        None,
    )
    return f"{change['address']} ({name})" if name else str(change["address"])


def summarize(stack: str, plan: Mapping[str, Any]) -> StackSummary:
    summary = StackSummary(stack)
    for change in plan.get("resource_changes", []):
        if change.get("mode", "managed") != "managed":
            continue
        actions = list(change["change"]["actions"])
        label = _label(change)
        if actions in (["no-op"], ["read"]):
            continue
        if actions == ["create"]:
            summary.create.append(label)
        elif actions == ["update"]:
            summary.update.append(label)
        elif actions == ["delete"]:
            summary.delete.append(label)
        elif sorted(actions) == ["create", "delete"]:
            summary.replace.append(label)
        else:
            raise ValueError(f"{stack}: unknown actions {actions} for {change['address']}")
        if change["type"] in STATEFUL_TYPES and ("delete" in actions):
            verb = "REPLACES" if "create" in actions else "DESTROYS"
            summary.warnings.append(f"{verb} stateful {label}")
    for name, change in sorted(plan.get("output_changes", {}).items()):
        if change.get("actions") not in (["no-op"], None):
            summary.outputs_changed.append(name)
    return summary


def render(environment: str, summaries: Sequence[StackSummary]) -> str:
    totals = {k: sum(len(getattr(s, k)) for s in summaries) for k in ("create", "update", "replace", "delete")}
    lines = [
        f"# Plan for `{environment}`",
        "",
        f"**{totals['create']} to add, {totals['update']} to change, {totals['replace']} to replace, "
        f"{totals['delete']} to destroy** across {len(summaries)} stacks.",
        "",
    ]
    warnings = [f"- **{s.stack}**: {w}" for s in summaries for w in s.warnings]
    if warnings:
        lines += ["## ⚠ Stateful resources replaced or destroyed", "", *warnings, ""]
    lines += ["| stack | add | change | replace | destroy |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {s.stack} | {len(s.create)} | {len(s.update)} | {len(s.replace)} | {len(s.delete)} |" for s in summaries
    ]
    for s in summaries:
        if not s.has_changes:
            continue
        lines += ["", f"## {s.stack}"]
        for title, items in (
            ("add", s.create),
            ("change", s.update),
            ("replace", s.replace),
            ("destroy", s.delete),
            ("outputs changed", s.outputs_changed),
        ):
            lines += [f"- {title}: `{item}`" for item in items]
    return "\n".join(lines) + "\n"
