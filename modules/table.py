"""The task table: one item per task, a status/created_at index for listing and idle checks."""

from __future__ import annotations

import re
from typing import Any

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.dynamodb_table import (
    DynamodbTable,
    DynamodbTableAttribute,
    DynamodbTableGlobalSecondaryIndex,
    DynamodbTablePointInTimeRecovery,
    DynamodbTableServerSideEncryption,
    DynamodbTableTtl,
)
from constructs import Construct

from core.tasks import STATUS_INDEX  # the index every program queries: one name, declared with the task model
from modules.iam import Role, Statement
from modules.props import check_actions, check_pattern

# Who needs what, as the seed lists it. TransactWriteItems (idempotent submit) is authorised per item as PutItem.
SUBMIT_ACTIONS = ("dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query")
WORKER_ACTIONS = ("dynamodb:GetItem", "dynamodb:UpdateItem")
INDEX_READ_ACTIONS = ("dynamodb:Query",)
# DynamoDB naming rules (Developer Guide, HowItWorks.NamingRulesDataTypes): table and index names are 3-255
# characters of a-z A-Z 0-9 _ - .
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")


STREAM_READ_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
)
# What a Lambda event source mapping on a table's stream needs of the function's role (Lambda Developer Guide,
# "Using AWS Lambda with Amazon DynamoDB", execution role permissions).


class RetainedTable(Construct):
    """A PAY_PER_REQUEST table with point-in-time recovery and encryption, retained like the seed's RETAIN:
    `prevent_destroy` plus deletion protection, so neither a plan nor a console click deletes it by accident.
    Subclasses give its keys (`attributes`: name -> S/N/B, the keys first) and any other table argument."""

    def __init__(
        self, scope: Construct, id: str, *, name: str, attributes: dict[str, str], hash_key: str, **table: Any
    ) -> None:
        super().__init__(scope, id)
        check_pattern(self, "name", name, TABLE_NAME, "3-255 characters of A-Za-z0-9_.- (DynamoDB table name)")
        self.table = DynamodbTable(
            self,
            "table",
            name=name,
            billing_mode="PAY_PER_REQUEST",
            hash_key=hash_key,
            attribute=[DynamodbTableAttribute(name=k, type=t) for k, t in attributes.items()],
            point_in_time_recovery=DynamodbTablePointInTimeRecovery(enabled=True),
            server_side_encryption=DynamodbTableServerSideEncryption(enabled=True),
            deletion_protection_enabled=True,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True),
            **table,
        )
        self.arn, self.name = self.table.arn, self.table.name


class TaskTable(RetainedTable):
    """`task_store`: PAY_PER_REQUEST, point-in-time recovery, TTL on `ttl`, GSI `status-created_at-index`, and a
    stream of new and old images (every state change, for the task-events function: modules/events.py).

    Args:
        name: the table's name: 3-255 characters of A-Za-z0-9_.- (DynamoDB naming rules). Required. Everything
            else is fixed: the schema is what functions/ reads and writes.
    """

    def __init__(self, scope: Construct, id: str, *, name: str) -> None:
        super().__init__(
            scope,
            id,
            name=name,
            attributes={"task_id": "S", "status": "S", "created_at": "N"},
            hash_key="task_id",
            global_secondary_index=[
                DynamodbTableGlobalSecondaryIndex(
                    name=STATUS_INDEX,
                    hash_key="status",
                    range_key="created_at",
                    projection_type="ALL",
                ),
            ],
            ttl=DynamodbTableTtl(attribute_name="ttl", enabled=True),
            # Both images: an event says what the state was and what it is now (core/events.py).
            stream_enabled=True,
            stream_view_type="NEW_AND_OLD_IMAGES",
        )
        self.index_name = STATUS_INDEX
        self.stream_arn = self.table.stream_arn

    def grant_stream_read(self, role: Role) -> list[Statement]:
        """Read the table's stream (any stream of it: a re-enabled stream gets a new label)."""
        return [role.add(STREAM_READ_ACTIONS, [f"{self.arn}/stream/*"])]

    @property
    def index_arn(self) -> str:
        return f"{self.arn}/index/{STATUS_INDEX}"

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """Item actions (dynamodb:*) on the table ARN; Query only on the index ARN (nothing queries the base
        table)."""
        actions = check_actions(self, actions, "dynamodb")
        item_actions = [a for a in actions if a != "dynamodb:Query"]
        added = [grantee.add(item_actions, [self.arn])] if item_actions else []
        if "dynamodb:Query" in actions:
            added.append(grantee.add(INDEX_READ_ACTIONS, [self.index_arn]))
        return added

    def grant_submit(self, role: Role) -> list[Statement]:
        return self.grant(role, *SUBMIT_ACTIONS)

    def grant_worker(self, role: Role) -> list[Statement]:
        return self.grant(role, *WORKER_ACTIONS)

    def grant_index_read(self, role: Role) -> list[Statement]:
        return self.grant(role, *INDEX_READ_ACTIONS)


HOST_WRITE_ACTIONS = ("dynamodb:UpdateItem",)
HOST_READ_ACTIONS = ("dynamodb:BatchGetItem",)
HOST_REPORT_ACTIONS = ("dynamodb:Scan",)


class HostTable(RetainedTable):
    """`gpu_hosts` (core/hosts.py): the adapters' liveness, the controller's stuck-worker recovery steps and the
    instances' billed running intervals. PAY_PER_REQUEST (a few writes a minute), point-in-time recovery,
    encrypted; retained like the task table, since its intervals are the cost history.

    Args:
        name: the table's name: 3-255 characters of A-Za-z0-9_.- (DynamoDB naming rules). Required.
    """

    def __init__(self, scope: Construct, id: str, *, name: str) -> None:
        super().__init__(
            scope, id, name=name, attributes={"instance_id": "S", "sk": "S"}, hash_key="instance_id", range_key="sk"
        )

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """Item actions (dynamodb:*) on the table ARN."""
        return [grantee.add(check_actions(self, actions, "dynamodb"), [self.arn])]

    def grant_liveness(self, role: Role) -> list[Statement]:
        """The adapter: its own instance's liveness item (HostStore.seen)."""
        return self.grant(role, *HOST_WRITE_ACTIONS)

    def grant_controller(self, role: Role) -> list[Statement]:
        """The controller: read liveness, record recovery steps and running intervals."""
        return self.grant(role, *HOST_READ_ACTIONS, *HOST_WRITE_ACTIONS)

    def grant_report(self, role: Role) -> list[Statement]:
        """The cost report: the running intervals (HostStore.intervals_since)."""
        return self.grant(role, *HOST_REPORT_ACTIONS)
