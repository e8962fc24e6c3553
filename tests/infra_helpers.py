"""Reading synthesized stacks in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load(outdir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((outdir / "stacks").glob("*/cdk.tf.json"))}


def resources(doc: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in body.items() if k != "//"} for body in doc.get("resource", {}).get(rtype, {}).values()]


def one(doc: dict[str, Any], rtype: str, **match: Any) -> dict[str, Any]:
    found = [r for r in resources(doc, rtype) if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {rtype} matching {match}, found {len(found)}"
    return found[0]


def policy_statements(doc: dict[str, Any], role_name: str) -> list[dict[str, Any]]:
    """The statements of the inline policy attached to the role named `role_name`."""
    roles = doc["resource"]["aws_iam_role"]
    (address,) = [a for a, body in roles.items() if body["name"] == role_name]
    (policy,) = [p for p in resources(doc, "aws_iam_role_policy") if p["role"] == f"${{aws_iam_role.{address}.id}}"]
    return list(json.loads(policy["policy"])["Statement"])


def actions_by_resource(statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for st in statements:
        assert st["Effect"] == "Allow"
        for res in st["Resource"]:
            out.setdefault(res, set()).update(st["Action"])
    return out
