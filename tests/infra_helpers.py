"""Reading synthesized stacks in tests, and building one construct alone to test its grants and its checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Before any provider import: registers the provider package without its 12 s __init__ (and loads no cdktf itself).
import modules  # noqa: F401

if TYPE_CHECKING:  # cdktf costs seconds to import: tests that only read JSON never pay for it
    from cdktf import TerraformStack

    from modules.iam import Role, Statement


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


# --- One construct in a stack of its own (tests/test_construct_*.py) ---


def fresh_stack(name: str = "test") -> TerraformStack:
    """A stack in a cdktf Testing app holding only the AWS provider: the construct under test goes in it alone."""
    from cdktf import TerraformStack, Testing
    from cdktf_cdktf_provider_aws.provider import AwsProvider

    stack = TerraformStack(Testing.app(), name)
    AwsProvider(stack, "aws", region="us-east-1")
    return stack


def synth(stack: TerraformStack) -> dict[str, Any]:
    from cdktf import Testing

    return dict(json.loads(Testing.synth(stack)))


def reference(stack: TerraformStack, value: str) -> str:
    """What `value` synthesizes to in `stack`: a token becomes its Terraform reference, plain text stays."""
    from cdktf import DefaultTokenResolver, StringConcat, Tokenization

    return str(Tokenization.resolve(value, scope=stack, preparing=False, resolver=DefaultTokenResolver(StringConcat())))


Granted = Sequence[tuple[Iterable[str], Iterable[str]]]


def _normalized(stack: TerraformStack, statements: Iterable[tuple[Iterable[str], Iterable[str]]]) -> set[Any]:
    return {
        (tuple(sorted(set(actions))), tuple(sorted({reference(stack, r) for r in resources})))
        for actions, resources in statements
    }


def assert_grant(stack: TerraformStack, grant: Callable[[Role], Sequence[Statement]], expected: Granted) -> None:
    """aws-cdk's testGrant: a fresh Role in the construct's stack receives `grant(role)`; the stack is synthesized and
    the role's inline policy must be exactly the `expected` (actions, resources) statements, resources given as the
    construct's ARNs (tokens) or literal ARNs. The grant must return the statements it added, and they say the same."""
    from modules.iam import Role, Statement

    name = f"grantee-{len(stack.node.children)}"
    role = Role(stack, name, name=name, assumed_by="lambda.amazonaws.com", description="Receives the grant under test")
    added = grant(role)
    assert added and all(isinstance(st, Statement) for st in added), added
    rendered = [(st["Action"], st["Resource"]) for st in policy_statements(synth(stack), name)]
    want = _normalized(stack, expected)
    assert _normalized(stack, rendered) == want
    # The role holds nothing else, so the returned statements, merged as the role merges them, are its policy.
    returned = [(st.actions, st.resources) for st in added]
    assert _normalized(stack, _merged_by_resources(returned)) == want


def _merged_by_resources(statements: Granted) -> Granted:
    merged: dict[tuple[str, ...], set[str]] = {}
    for actions, resources in statements:
        merged.setdefault(tuple(sorted(set(resources))), set()).update(actions)
    return [(actions, resources) for resources, actions in merged.items()]


def refusal(build: Callable[[TerraformStack], object]) -> str:
    """The one-line ConstructPropError that `build` raises in a fresh stack named `bad`."""
    import pytest

    from modules.props import ConstructPropError

    with pytest.raises(ConstructPropError) as err:
        build(fresh_stack("bad"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad/"), message
    return message
