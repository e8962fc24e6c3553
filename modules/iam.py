"""IAM for every construct: the one ARN helper, the one policy renderer, and roles that collect least-privilege
statements from grant helpers (`queue.grant_send_messages(role)`).

A role renders its statements into one inline policy. Grants merge by resource set, so a plan shows one readable
statement per resource set instead of one per call, and the rendering is sorted so the JSON never churns: literal
ARNs by their text, other resources' ARNs (cdktf tokens) by where the code first names them (`TokenOrder`).

A role given its `account` trusts its service only on behalf of that account (the confused-deputy keys the service
sets, see `service_trust`); one given a `permissions_boundary` can never do more than that managed policy allows,
whatever its inline policy says (the boundary `make bootstrap` creates: `boundary_arn`, modules/bootstrap.py).
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

from modules.props import TOKEN, check, check_actions, check_pattern, check_range, fail

POLICY_VERSION = "2012-10-17"
# IAM and STS quotas (IAM User Guide, reference_iam-quotas): role names up to 64 characters, instance profile names up
# to 128, both of letters, digits and +=,.@_-. CreateRole: a description of at most 1000 characters, and a
# MaxSessionDuration from 1 hour to 12 hours (3600..43200 s; AWS's default is 3600).
ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
ROLE_NAME_RULE = "1-64 characters of A-Za-z0-9+=,.@_- (IAM role name)"
ACCOUNT_ID = re.compile(r"\d{12}", re.ASCII)
PROFILE_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
DESCRIPTION = re.compile(r"[\t\n\r\u0020-\u007e\u00a1-\u00ff]{0,1000}")
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS = 3600, 43200
# A permissions boundary is a managed policy (PutRolePermissionsBoundary: "the ARN of the managed policy"), of this
# account or AWS's: arn:<partition>:iam::<account>|aws:policy/<path><name>.
POLICY_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}", re.ASCII)
BOUNDARY_PREFIX = "gpu-orchestrator"

# The confused-deputy keys a service principal sets when it assumes a role, and so may be required in that role's
# trust policy (IAM User Guide, "The confused deputy problem", cross-service confused deputy prevention:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html). Only keys a service is known to send: a
# condition on a key it does not send makes its AssumeRole fail, and the role with it.
# - ecs-tasks.amazonaws.com: aws:SourceAccount and aws:SourceArn arn:aws:ecs:<region>:<account>:* (Amazon ECS
#   Developer Guide, "Amazon ECS task IAM role", the trust policy it recommends against the confused deputy:
#   https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html).
# - lambda.amazonaws.com: aws:SourceAccount (the execution-role trust policy AWS publishes in its own samples
#   conditions on it: https://github.com/aws/agent-toolkit-for-aws, skills/specialized-skills/serverless-skills/
#   deploying-custom-domain-rest-api/scripts/lambda-trust-policy.json). Not aws:SourceArn: no Lambda guide documents
#   it for the execution role's AssumeRole (the function's ARN reaches its calls as lambda:SourceFunctionArn instead,
#   Lambda Developer Guide, "Using source function ARN to control function access behavior").
# - ec2.amazonaws.com: none. No EC2 guide documents either key for the AssumeRole behind an instance profile, and
#   an instance role cannot be lent across accounts anyway: only iam:PassRole in this account puts it in a profile.
SOURCE_ACCOUNT_SERVICES = frozenset({"ecs-tasks.amazonaws.com", "lambda.amazonaws.com"})
SOURCE_ARN_SERVICES = {"ecs-tasks.amazonaws.com": "ecs"}  # service principal -> the service of its source ARNs


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
    return values if isinstance(values, str) else TokenOrder().ordered(values)


class TokenOrder:
    """Sort keys for strings that may hold cdktf tokens. A token's text numbers it by when it was minted in the
    process (every attribute read mints one), so sorting on that text would order a policy by the history of the
    whole synth: a change in one stack, or tests that synthesize something else first, would reorder another
    stack's statements, a plan diff that means nothing. Here a token ranks by where it first appears in what is
    being ordered, i.e. by the code's own grant order; literal text sorts as text."""

    def __init__(self) -> None:
        self._rank: dict[str, int] = {}

    def key(self, value: str) -> str:
        return TOKEN.sub(lambda m: f"${{token:{self._rank.setdefault(m.group(0), len(self._rank)):06d}}}", value)

    def ordered(self, values: Iterable[str]) -> list[str]:
        """`values` without repeats, sorted; tokens are ranked in the order given (first appearance)."""
        distinct = list(dict.fromkeys(values))
        keys = [self.key(v) for v in distinct]
        return [v for _, v in sorted(zip(keys, distinct, strict=True))]


def policy(statements: Iterable[Statement]) -> dict[str, Any]:
    """A policy document (identity, resource or trust policy) of these statements, in this order."""
    return {"Version": POLICY_VERSION, "Statement": [st.render() for st in statements]}


def render(document: Mapping[str, Any], *, compact: bool = False) -> str:
    """The JSON of a policy document (or any JSON-valued attribute): keys sorted, so the same input synthesizes
    byte-identical JSON. `compact` drops the spaces (IAM counts a policy's bytes against its quota)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":") if compact else None)


def merge(statements: Iterable[Statement]) -> list[Statement]:
    """One Allow statement per (resource set, conditions, sid), sorted by that key (TokenOrder's, so the order
    depends on these statements alone)."""
    order = TokenOrder()
    merged: dict[tuple[tuple[str, ...], str, str], set[str]] = {}
    for st in statements:
        key = (tuple(order.ordered(st.resources)), json.dumps(st.conditions, sort_keys=True), st.sid)
        merged.setdefault(key, set()).update(st.actions)

    def rank(item: tuple[tuple[tuple[str, ...], str, str], set[str]]) -> tuple[tuple[str, ...], str, str]:
        (resources, cond, sid), _ = item
        return tuple(order.key(r) for r in resources), order.key(cond), sid

    return [
        Statement(tuple(actions), resources, json.loads(cond), sid)
        for (resources, cond, sid), actions in sorted(merged.items(), key=rank)
    ]


def boundary_name(environment: str, prefix: str = BOUNDARY_PREFIX) -> str:
    """The runtime boundary of one environment: `<prefix>-boundary-<env>` (a managed policy made by bootstrap)."""
    return f"{prefix}-boundary-{environment}"


def boundary_arn(*, account: str, environment: str, prefix: str = BOUNDARY_PREFIX, partition: str = "aws") -> str:
    """The ARN of `boundary_name(environment)` in `account`: the only boundary the deploy role may set, and the one
    every runtime role of that environment carries."""
    return arn("iam", f"policy/{boundary_name(environment, prefix)}", region="", account=account, partition=partition)


def service_trust(
    service: str, *, account: str | None = None, region: str | None = None, partition: str = "aws"
) -> dict[str, Any]:
    """The trust policy letting `service` assume a role; with `account`, only on behalf of that account, through the
    keys the service sets (SOURCE_ACCOUNT_SERVICES, SOURCE_ARN_SERVICES). Without it, the bare trust."""
    conditions: dict[str, dict[str, str]] = {}
    if account is not None and service in SOURCE_ACCOUNT_SERVICES:
        conditions["StringEquals"] = {"aws:SourceAccount": account}
    if account is not None and service in SOURCE_ARN_SERVICES:
        source = arn(SOURCE_ARN_SERVICES[service], "*", region=region or "*", account=account, partition=partition)
        conditions["ArnLike"] = {"aws:SourceArn": source}
    return policy([Statement("sts:AssumeRole", conditions=conditions, principal={"Service": service})])


def trust_policy(service: str, *, account: str | None = None, region: str | None = None) -> str:
    return render(service_trust(service, account=account, region=region))


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
        account: the 12-digit account the service may act for: the trust then requires the confused-deputy keys the
            service sets (`service_trust`). Default None: the bare service trust.
        region: the region in the source ARN a service's trust names (ECS). Default None: any region.
        permissions_boundary: the ARN of a managed policy capping the role (`boundary_arn`). Default None.
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
        account: str | None = None,
        region: str | None = None,
        permissions_boundary: str | None = None,
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
        check_pattern(self, "account", account, ACCOUNT_ID, "a 12-digit AWS account id")
        check_pattern(
            self, "permissions_boundary", permissions_boundary, POLICY_ARN, "a managed policy ARN (arn:aws:iam::...)"
        )
        self._statements: list[Statement] = []
        self._policy: IamRolePolicy | None = None
        self.resource = IamRole(
            self,
            "role",
            name=name,
            description=description,
            assume_role_policy=trust_policy(assumed_by, account=account, region=region),
            max_session_duration=max_session_duration,
            permissions_boundary=permissions_boundary,
        )
        self.arn, self.name = self.resource.arn, self.resource.name
        self.profile = (
            IamInstanceProfile(self, "profile", name=instance_profile_name, role=self.resource.name)
            if instance_profile_name
            else None
        )

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
