"""The base of a construct around one AWS resource: its `arn` and the generic `grant()` on it.

AWS CDK's L2s give every resource construct `grant(grantee, *actions)` beside its named grants; here it is written
once. A subclass names its service (`SERVICE`, the IAM action prefix) and sets `arn` (and `name`, where the
resource has one) as soon as it has created its resource; its named grants (`grant_publish`, ...) call `grant()`
with their least-privilege action sets.

Every construct here reads each attribute of its resources once, into a plain attribute (`self.arn =
self.queue.arn`), rather than behind a property: each read of a cdktf attribute mints a new token, and a role
merges statements by their resources' text (modules/iam.py merge), so two grants on one queue become one statement
only when they name it by the same token.
"""

from __future__ import annotations

from typing import ClassVar

from constructs import Construct

from modules.iam import Role, Statement
from modules.props import check_actions


class ResourceConstruct(Construct):
    SERVICE: ClassVar[str]  # the IAM prefix of the resource's actions: "lambda", "sns", "events", ...
    arn: str  # the resource's ARN (a Terraform reference): what every grant is scoped to

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (each `SERVICE:*`) on exactly this resource; returns the statement it added to `grantee`."""
        return [grantee.add(check_actions(self, actions, self.SERVICE), [self.arn])]
