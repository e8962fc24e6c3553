"""Reading synthesized cdk.tf.json: the resources of each stack, their references, and a creation order.

Only what our stacks emit is understood: `${type.name.attr}` and `${data.terraform_remote_state.X.outputs.Y}`
interpolations inside strings. Anything else is an error, never silently passed through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_REFERENCE = re.compile(r"^[A-Za-z0-9_.-]+$")
REMOTE_STATE_PREFIX = "cross-stack-reference-input-"
META_ARGUMENTS = {"depends_on", "lifecycle", "//"}  # understood and not sent to AWS


class UnsupportedTerraform(ValueError):
    """The JSON holds something this harness does not model; extend the harness rather than ignore it."""


@dataclass(frozen=True)
class Resource:
    stack: str
    type: str
    name: str
    body: Mapping[str, Any]
    stack_dir: Path

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"

    @property
    def key(self) -> str:
        return f"{self.stack}/{self.address}"


@dataclass(frozen=True)
class Stack:
    name: str
    directory: Path
    doc: Mapping[str, Any]

    def resources(self) -> Iterator[Resource]:
        for rtype, items in sorted(self.doc.get("resource", {}).items()):
            for rname, body in sorted(items.items()):
                yield Resource(self.name, rtype, rname, body, self.directory)

    def cross_stack_reads(self) -> dict[str, str]:
        """data.terraform_remote_state name -> the stack it reads (other data sources are not looked at)."""
        out = {}
        for name in self.doc.get("data", {}).get("terraform_remote_state", {}):
            if not name.startswith(REMOTE_STATE_PREFIX):
                raise UnsupportedTerraform(f"{self.name}: remote state {name!r} is not a cdktf cross-stack reference")
            out[name] = name[len(REMOTE_STATE_PREFIX) :]
        return out

    def remote_states(self) -> dict[str, str]:
        """cross_stack_reads(), for a stack that reads no other data source (one that does is an error here: a
        resolver that reads them, localaws/gpu_resources.py DataResolver, binds the stack without them)."""
        other = set(self.doc.get("data", {})) - {"terraform_remote_state"}
        if other:
            raise UnsupportedTerraform(f"{self.name}: data sources {sorted(other)} are not modelled")
        return self.cross_stack_reads()


def load_stacks(outdir: Path) -> dict[str, Stack]:
    stacks_dir = Path(outdir) / "stacks"
    stacks = {}
    for path in sorted(stacks_dir.glob("*/cdk.tf.json")):
        stacks[path.parent.name] = Stack(path.parent.name, path.parent, json.loads(path.read_text()))
    if not stacks:
        raise FileNotFoundError(f"no synthesized stacks under {stacks_dir} (run `make synth`)")
    return stacks


def references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        for match in _INTERPOLATION.finditer(value):
            expr = match.group(1)
            if not _REFERENCE.match(expr):
                raise UnsupportedTerraform(f"expression ${{{expr}}} is not a plain reference")
            yield expr
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def stack_order(stacks: Mapping[str, Stack], declared: Sequence[str]) -> list[str]:
    """`declared` (modules.layout.STACK_ORDER: the order Terraform applies them in), checked against the JSON: the
    synthesized stacks are exactly those, and each reads (remote state) only stacks before it. A mismatch means the
    layout and the stacks disagree, which the harness reports rather than papering over with an order of its own."""
    if sorted(stacks) != sorted(declared):
        raise UnsupportedTerraform(f"synthesized stacks {sorted(stacks)} are not the declared {list(declared)}")
    for position, name in enumerate(declared):
        later = set(stacks[name].cross_stack_reads().values()) - set(declared[:position])
        if later:
            raise UnsupportedTerraform(f"{name} reads {sorted(later)}, which the declared order puts after it")
    return list(declared)


def resource_order(stack: Stack) -> list[Resource]:
    by_address = {r.address: r for r in stack.resources()}
    graph: dict[str, set[str]] = {}
    for address, res in by_address.items():
        deps = set()
        for ref in references({k: v for k, v in res.body.items() if k != "//"}):
            if ref.startswith("data."):
                continue
            target = ".".join(ref.split(".")[:2])
            if target not in by_address:
                raise UnsupportedTerraform(f"{stack.name}: {address} refers to unknown {target}")
            deps.add(target)
        for dep in res.body.get("depends_on", []):
            deps.add(dep)
        graph[address] = deps
    return [by_address[a] for a in TopologicalSorter(graph).static_order()]


class Resolver:
    """Values of references: created resources' attributes and other stacks' outputs."""

    def __init__(self) -> None:
        self.attributes: dict[str, dict[str, Any]] = {}  # "<stack>/<type>.<name>" -> attributes
        self.outputs: dict[str, dict[str, Any]] = {}  # stack -> output name -> value
        self._remote: dict[str, dict[str, str]] = {}  # stack -> remote-state name -> producer stack

    def bind(self, stack: Stack) -> None:
        self._remote[stack.name] = stack.remote_states()

    def lookup(self, stack: str, ref: str) -> Any:
        parts = ref.split(".")
        if parts[0] == "data":
            if len(parts) != 5 or parts[1] != "terraform_remote_state" or parts[3] != "outputs":
                raise UnsupportedTerraform(f"{stack}: reference {ref} is not a remote-state output")
            producer = self._remote[stack][parts[2]]
            return self.outputs[producer][parts[4]]
        if len(parts) != 3:
            raise UnsupportedTerraform(f"{stack}: reference {ref} is not <type>.<name>.<attribute>")
        attrs = self.attributes[f"{stack}/{parts[0]}.{parts[1]}"]
        if parts[2] not in attrs:
            raise UnsupportedTerraform(f"{stack}: {parts[0]}.{parts[1]} has no modelled attribute {parts[2]!r}")
        return attrs[parts[2]]

    def resolve(self, stack: str, value: Any) -> Any:
        if isinstance(value, str):
            whole = _INTERPOLATION.fullmatch(value)
            if whole:
                return self.lookup(stack, whole.group(1))
            return _INTERPOLATION.sub(lambda m: str(self.lookup(stack, m.group(1))), value)
        if isinstance(value, Mapping):
            return {k: self.resolve(stack, v) for k, v in value.items() if k != "//"}
        if isinstance(value, list):
            return [self.resolve(stack, v) for v in value]
        return value

    def record_outputs(self, stack: Stack) -> None:
        self.outputs[stack.name] = {
            name: self.resolve(stack.name, spec["value"]) for name, spec in stack.doc.get("output", {}).items()
        }
