"""Who is calling: the `Caller` every handler acts for, and how each auth mode finds it.

- Bearer mode (ORCHESTRATOR_AUTH=token, the default): whoever holds the one shared token is the one caller,
  `local`. With one principal there is nobody to hide tasks from, so it sees every task (also tasks written before
  tasks had an owner).
- IAM mode (ORCHESTRATOR_AUTH=iam): the service runs behind a Lambda function URL whose auth type is AWS_IAM, so
  Lambda has already checked the request's SigV4 signature before the function runs. The caller is the ARN Lambda
  put in the event, `requestContext.authorizer.iam.userArn` (the function URL request payload, version 2.0:
  https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html#urls-payloads). Mangum hands the Lambda event
  to the ASGI app as `scope["aws.event"]` (https://mangum.io/, "Event and context";
  https://pypi.org/project/mangum/). Nothing a client sends can set it: a request that did not come through
  Lambda (uvicorn, a test client) has no event, hence no identity, and is refused.

An IAM caller sees only the tasks whose `submitted_by` is its ARN, unless it is an admin: its ARN matches
ORCHESTRATOR_ADMIN_ARNS, or the request came in through the function's admin alias (`core.contract.ADMIN_ALIAS`).
That alias has its own function URL, and the stack's admin managed policy allows lambda:InvokeFunctionUrl on that
alias only (https://docs.aws.amazon.com/lambda/latest/dg/urls-auth.html), so reaching the app through it is proof
of holding that policy. Lambda tells the function which ARN it was invoked by in the context object's
`invoked_function_arn`, which names the alias when the invoker used one
(https://docs.aws.amazon.com/lambda/latest/dg/python-context-object.html); Mangum hands that context to the app as
`scope["aws.context"]`. Nobody may hold lambda:InvokeFunction on either qualifier: a direct Invoke carries an event
the invoker wrote, identity included; only a function URL's event is written by Lambda.

For an assumed role the ARN includes the session name, which whoever assumes the role chooses unless the role's
trust policy pins it (IAM Identity Center sets it to the user name).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.contract import ADMIN_ALIAS

LOCAL = "local"  # the identity of bearer mode's one caller
SCOPE_KEY = "orchestrator.caller"  # where the auth middleware leaves the Caller in the ASGI scope
_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    id: str
    admin: bool = False

    @property
    def slug(self) -> str:
        """A form of the identity safe as one S3 key segment ([A-Za-z0-9._-], no '..', at most 64 characters).
        ARNs become their readable tail plus 16 hex of their sha256, so two identities never share a slug."""
        if _SAFE.match(self.id) and ".." not in self.id:
            return self.id
        tail = self.id.split(":", 5)[-1] if self.id.startswith("arn:") else self.id
        readable = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", tail)).strip(".-")[:40].rstrip(".-")
        digest = hashlib.sha256(self.id.encode("utf-8", "backslashreplace")).hexdigest()[:16]
        return f"{readable}-{digest}" if readable else digest

    @property
    def input_prefix(self) -> str:
        """Where this caller's uploads go; the only inputs a non-admin caller may name in a task."""
        return f"inputs/{self.slug}/"

    def owns(self, submitted_by: str | None) -> bool:
        """Whether this caller may see a task with this owner. Tasks without one (older than ownership) belong to
        admins only."""
        return self.admin or (submitted_by is not None and submitted_by == self.id)


def is_admin(arn: str, admins: Iterable[str]) -> bool:
    """An entry ending in '/' is a prefix (`arn:aws:sts::123456789012:assumed-role/Admin/`: every session of that
    role); any other entry must equal the ARN."""
    return any(arn.startswith(entry) if entry.endswith("/") else arn == entry for entry in admins)


def iam_caller_arn(scope: Mapping[str, Any]) -> str | None:
    """The caller's ARN from the function URL event Mangum put in the scope, or None (no event, other auth)."""
    event = scope.get("aws.event")
    node: Any = event
    for key in ("requestContext", "authorizer", "iam", "userArn"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, str) and node.startswith("arn:") else None


def invoked_through_alias(scope: Mapping[str, Any], alias: str = ADMIN_ALIAS) -> bool:
    """Whether Lambda ran this request for the function's `alias`: the context's invoked_function_arn is
    `arn:aws:lambda:<region>:<account>:function:<name>:<alias>` (an unqualified invoke has no 8th part)."""
    arn = getattr(scope.get("aws.context"), "invoked_function_arn", None)
    if not isinstance(arn, str):
        return False
    parts = arn.split(":")
    return len(parts) == 8 and (parts[0], parts[2], parts[5], parts[7]) == ("arn", "lambda", "function", alias)


def iam_caller(scope: Mapping[str, Any], admins: Iterable[str]) -> Caller | None:
    """The IAM caller of a function URL request, admin by ORCHESTRATOR_ADMIN_ARNS or by the admin alias; None when
    the request carries no IAM identity (it did not come through a function URL)."""
    arn = iam_caller_arn(scope)
    if arn is None:
        return None
    return Caller(arn, admin=is_admin(arn, admins) or invoked_through_alias(scope))
