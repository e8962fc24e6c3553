"""The GPU instances the system starts and stops. They are not created here: they are configured per environment
(AMI, drivers and disks are the GPU owner's business); this construct scopes permissions to exactly them."""

from __future__ import annotations

from collections.abc import Sequence

from modules.iam import Role, Statement, arn
from modules.props import check_actions, fail

# DescribeInstances supports no resource-level permissions: AWS accepts only "*" for it.
DESCRIBE_ACTIONS = ("ec2:DescribeInstances",)
START_ACTIONS = ("ec2:StartInstances",)
STOP_ACTIONS = ("ec2:StopInstances",)


class GpuInstances:
    """Not a Construct: it creates nothing, it only knows the instance ARNs and hands out grants.

    Args:
        instance_ids: the GPU instances (modules/config.py checks their form). At least one. Required.
        region, account: where they run. Required.
    """

    def __init__(self, *, instance_ids: Sequence[str], region: str, account: str) -> None:
        if not instance_ids:
            fail("GpuInstances", "instance_ids", tuple(instance_ids), "is empty: at least one GPU instance is required")
        self.instance_ids = tuple(instance_ids)
        self.arns = tuple(arn("ec2", f"instance/{i}", region=region, account=account) for i in instance_ids)

    def grant(self, grantee: Role, *actions: str) -> list[Statement]:
        """`actions` (ec2:*) on exactly these instances."""
        return [grantee.add(check_actions("GpuInstances", actions, "ec2"), self.arns)]

    def grant_describe(self, role: Role) -> list[Statement]:
        return [role.add(DESCRIBE_ACTIONS, ["*"])]

    def grant_start(self, role: Role) -> list[Statement]:
        return self.grant(role, *START_ACTIONS)

    def grant_stop(self, role: Role) -> list[Statement]:
        return self.grant(role, *STOP_ACTIONS)
