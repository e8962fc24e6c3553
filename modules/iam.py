"""IAM for every construct: the one ARN helper, the one policy renderer, and roles that collect least-privilege
statements from grant helpers (`queue.grant_send_messages(role)`).

A role renders its statements into one inline policy. Grants merge by resource set, so a plan shows one readable
statement per resource set instead of one per call, and the rendering is sorted so the JSON never churns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdktf_cdktf_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from constructs import Construct

from modules.props import check, check_actions, check_pattern, check_range, fail

POLICY_VERSION = "2012-10-17"
# IAM and STS quotas (IAM User Guide, reference_iam-quotas): role names up to 64 characters, instance profile names up
# to 128, both of letters, digits and +=,.@_-. CreateRole: a description of at most 1000 characters, and a
# MaxSessionDuration from 1 hour to 12 hours (3600..43200 s; AWS's default is 3600).
ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
ROLE_NAME_RULE = "1-64 characters of A-Za-z0-9+=,.@_- (IAM role name)"
PROFILE_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
DESCRIPTION = re.compile(r"[\t\n\r\u0020-\u007e\u00a1-\u00ff]{0,1000}")
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS = 3600, 43200


def arn(service: str, resource: str, *, region: str, account: str, partition: str = "aws") -> str:
    """`arn:<partition>:<service>:<region>:<account>:<resource>`. Global services leave region (IAM, S3) and account
    (S3) empty; `*` in either is a pattern, for policies that reach every region."""
    return f"arn:{partition}:{service}:{region}:{account}:{resource}"


@dataclass(frozen=True)
class Statement:
    """One policy statement. Resources are ARNs (tokens allowed); `"*"` only where AWS offers nothing narrower.

    `actions` and `resources` given as a str render as a JSON string, as a tuple as a sorted list: IAM reads both
    forms the same, and each document keeps the form it has always had, so no plan shows a change that isn't one.
    A trust policy's statement has a principal and no resources.
    """

    actions: str | tuple[str, ...]
    resources: str | tuple[str, ...] = ()
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sid: str = ""
    effect: str = "Allow"
    principal: str | Mapping[str, Any] | None = None

    def render(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"Effect": self.effect, "Action": _one_or_sorted(self.actions)}
        if self.resources:
            doc["Resource"] = _one_or_sorted(self.resources)
        if self.principal is not None:
            doc["Principal"] = self.principal if isinstance(self.principal, str) else dict(self.principal)
        if self.sid:
            doc["Sid"] = self.sid
        if self.conditions:
            doc["Condition"] = {k: dict(v) for k, v in self.conditions.items()}
        return doc


def _one_or_sorted(values: str | tuple[str, ...]) -> str | list[str]:
    return values if isinstance(values, str) else sorted(set(values))


def policy(statements: Iterable[Statement]) -> dict[str, Any]:
    """A policy document (identity, resource or trust policy) of these statements, in this order."""
    return {"Version": POLICY_VERSION, "Statement": [st.render() for st in statements]}


def render(document: Mapping[str, Any], *, compact: bool = False) -> str:
    """The JSON of a policy document (or any JSON-valued attribute): keys sorted, so the same input synthesizes
    byte-identical JSON. `compact` drops the spaces (IAM counts a policy's bytes against its quota)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":") if compact else None)


def merge(statements: Iterable[Statement]) -> list[Statement]:
    """One Allow statement per (resource set, conditions, sid), sorted by that key."""
    merged: dict[tuple[tuple[str, ...], str, str], set[str]] = {}
    for st in statements:
        key = (tuple(sorted(set(st.resources))), json.dumps(st.conditions, sort_keys=True), st.sid)
        merged.setdefault(key, set()).update(st.actions)
    return [
        Statement(tuple(actions), resources, json.loads(cond), sid)
        for (resources, cond, sid), actions in sorted(merged.items())
    ]


def trust_policy(service: str) -> str:
    return render(policy([Statement("sts:AssumeRole", principal={"Service": service})]))


class Role(Construct):
    """An IAM role assumable by one AWS service, with one inline policy (`least-privilege`) built from grants.

    Args:
        name: RoleName: 1-64 characters of A-Za-z0-9+=,.@_- (IAM quotas). Required.
        assumed_by: the service principal its trust policy names (`lambda.amazonaws.com`). Required.
        description: up to 1000 printable Latin-1 characters (CreateRole). Required.
        instance_profile_name: also create an EC2 instance profile of this name (1-128 characters of the same
            set). Default None: no profile.
        max_session_duration: MaxSessionDuration in seconds, 3600..43200 (CreateRole). Default 3600, AWS's own:
            every caller here is a service that refreshes its credentials itself.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        assumed_by: str,
        description: str,
        instance_profile_name: str | None = None,
        max_session_duration: int = MIN_SESSION_SECONDS,
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, ROLE_NAME, ROLE_NAME_RULE)
        check(self, "assumed_by", assumed_by, assumed_by.endswith(".amazonaws.com"), "is not an AWS service principal")
        check_pattern(self, "description", description, DESCRIPTION, "up to 1000 printable characters (CreateRole)")
        check_pattern(
            self, "instance_profile_name", instance_profile_name, PROFILE_NAME, "1-128 characters of A-Za-z0-9+=,.@_-"
        )
        check_range(
            self, "max_session_duration", max_session_duration, MIN_SESSION_SECONDS, MAX_SESSION_SECONDS, "CreateRole"
        )
        self._statements: list[Statement] = []
        self._policy: IamRolePolicy | None = None
        self.resource = IamRole(
            self,
            "role",
            name=name,
            description=description,
            assume_role_policy=trust_policy(assumed_by),
            max_session_duration=max_session_duration,
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

    def add(
        self,
        actions: Iterable[str],
        resources: Iterable[str],
        *,
        conditions: Mapping[str, Any] | None = None,
        sid: str = "",
    ) -> Statement:
        """Allow `actions` on `resources` in this role's inline policy; returns the statement added."""
        actions, resources = tuple(actions), tuple(resources)
        if not actions or not resources:
            fail(self, "statement", (actions, resources), "needs actions and resources")
        statement = Statement(actions, resources, conditions or {}, sid)
        self._statements.append(statement)
        document = render(policy(merge(self._statements)))
        if self._policy is None:
            self._policy = IamRolePolicy(self, "policy", name="least-privilege", role=self.resource.id, policy=document)
        else:
            self._policy.policy = document
        return statement

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (iam:*) on this role, for another role (`role.grant(ci, "iam:PassRole")`)."""
        return [grantee.add(check_actions(self, actions, "iam"), [self.arn])]
