"""IAM roles that collect least-privilege statements from grant helpers (`queue.grant_send_messages(role)`).

A role renders its statements into one inline policy. Grants merge by resource set, so a plan shows one readable
statement per resource set instead of one per call, and the rendering is sorted so the JSON never churns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdktf_cdktf_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from constructs import Construct

POLICY_VERSION = "2012-10-17"


@dataclass(frozen=True)
class Statement:
    """One Allow statement. Resources are ARNs (tokens allowed); `"*"` only where AWS offers nothing narrower."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sid: str = ""

    def render(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Effect": "Allow",
            "Action": sorted(set(self.actions)),
            "Resource": sorted(set(self.resources)),
        }
        if self.sid:
            doc["Sid"] = self.sid
        if self.conditions:
            doc["Condition"] = {k: dict(v) for k, v in self.conditions.items()}
        return doc


def policy_document(statements: Iterable[Statement]) -> str:
    merged: dict[tuple[tuple[str, ...], str, str], set[str]] = {}
    for st in statements:
        key = (tuple(sorted(set(st.resources))), json.dumps(st.conditions, sort_keys=True), st.sid)
        merged.setdefault(key, set()).update(st.actions)
    rendered = [
        Statement(tuple(actions), resources, json.loads(cond), sid).render()
        for (resources, cond, sid), actions in sorted(merged.items())
    ]
    return json.dumps({"Version": POLICY_VERSION, "Statement": rendered}, sort_keys=True)


def trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": POLICY_VERSION,
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        },
        sort_keys=True,
    )


class Role(Construct):
    """An IAM role assumable by one AWS service, with an inline policy built from grants."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        assumed_by: str,
        description: str,
        instance_profile_name: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        self._statements: list[Statement] = []
        self._policy: IamRolePolicy | None = None
        self.resource = IamRole(
            self,
            "role",
            name=name,
            description=description,
            assume_role_policy=trust_policy(assumed_by),
            max_session_duration=3600,
        )
        self.profile = (
            IamInstanceProfile(self, "profile", name=instance_profile_name, role=self.resource.name)
            if instance_profile_name
            else None
        )

    @property
    def arn(self) -> str:
        return self.resource.arn

    @property
    def name(self) -> str:
        return self.resource.name

    @property
    def statements(self) -> Sequence[Statement]:
        return tuple(self._statements)

    def add(
        self,
        actions: Iterable[str],
        resources: Iterable[str],
        *,
        conditions: Mapping[str, Any] | None = None,
        sid: str = "",
    ) -> None:
        actions, resources = tuple(actions), tuple(resources)
        if not actions or not resources:
            raise ValueError(f"{self.node.path}: a statement needs actions and resources")
        self._statements.append(Statement(actions, resources, conditions or {}, sid))
        document = policy_document(self._statements)
        if self._policy is None:
            self._policy = IamRolePolicy(self, "policy", name="least-privilege", role=self.resource.id, policy=document)
        else:
            self._policy.policy = document
