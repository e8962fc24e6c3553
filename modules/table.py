"""The task table: one item per task, a status/created_at index for listing and idle checks."""

from __future__ import annotations

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

from modules.iam import Role

STATUS_INDEX = "status-created_at-index"

# Who needs what, as the seed lists it. TransactWriteItems (idempotent submit) is authorised per item as PutItem.
SUBMIT_ACTIONS = ("dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query")
WORKER_ACTIONS = ("dynamodb:GetItem", "dynamodb:UpdateItem")
INDEX_READ_ACTIONS = ("dynamodb:Query",)


class TaskTable(Construct):
    """`task_store`: PAY_PER_REQUEST, point-in-time recovery, TTL on `ttl`, GSI `status-created_at-index`.

    Retained like the seed's RETAIN: `prevent_destroy` plus deletion protection, so neither a plan nor a console
    click deletes task history by accident.
    """

    def __init__(self, scope: Construct, id: str, *, name: str) -> None:
        super().__init__(scope, id)
        self.index_name = STATUS_INDEX
        self.table = DynamodbTable(
            self,
            "table",
            name=name,
            billing_mode="PAY_PER_REQUEST",
            hash_key="task_id",
            attribute=[
                DynamodbTableAttribute(name="task_id", type="S"),
                DynamodbTableAttribute(name="status", type="S"),
                DynamodbTableAttribute(name="created_at", type="N"),
            ],
            global_secondary_index=[
                DynamodbTableGlobalSecondaryIndex(
                    name=STATUS_INDEX,
                    hash_key="status",
                    range_key="created_at",
                    projection_type="ALL",
                ),
            ],
            point_in_time_recovery=DynamodbTablePointInTimeRecovery(enabled=True),
            ttl=DynamodbTableTtl(attribute_name="ttl", enabled=True),
            server_side_encryption=DynamodbTableServerSideEncryption(enabled=True),
            deletion_protection_enabled=True,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True),
        )

    @property
    def arn(self) -> str:
        return self.table.arn

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def index_arn(self) -> str:
        return f"{self.table.arn}/index/{STATUS_INDEX}"

    def grant(self, role: Role, *actions: str) -> None:
        """Item actions on the table ARN; Query only on the index ARN (we never query the base table)."""
        item_actions = [a for a in actions if a != "dynamodb:Query"]
        if item_actions:
            role.add(item_actions, [self.arn])
        if "dynamodb:Query" in actions:
            role.add(INDEX_READ_ACTIONS, [self.index_arn])

    def grant_submit(self, role: Role) -> None:
        self.grant(role, *SUBMIT_ACTIONS)

    def grant_worker(self, role: Role) -> None:
        self.grant(role, *WORKER_ACTIONS)

    def grant_index_read(self, role: Role) -> None:
        role.add(INDEX_READ_ACTIONS, [self.index_arn])
