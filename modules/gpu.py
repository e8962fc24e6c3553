"""The GPU instances the system starts and stops. They are not created here: they are configured per environment
(AMI, drivers and disks are the GPU owner's business); this construct scopes permissions to exactly them."""

from __future__ import annotations

from collections.abc import Sequence

from modules.iam import Role

# DescribeInstances supports no resource-level permissions: AWS accepts only "*" for it.
DESCRIBE_ACTIONS = ("ec2:DescribeInstances",)
START_ACTIONS = ("ec2:StartInstances",)
STOP_ACTIONS = ("ec2:StopInstances",)


class GpuInstances:
    """Not a Construct: it creates nothing, it only knows the instance ARNs and hands out grants."""

    def __init__(self, *, instance_ids: Sequence[str], region: str, account: str) -> None:
        if not instance_ids:
            raise ValueError("at least one GPU instance id is required")
        self.instance_ids = tuple(instance_ids)
        self.arns = tuple(f"arn:aws:ec2:{region}:{account}:instance/{i}" for i in instance_ids)

    def grant_describe(self, role: Role) -> None:
        role.add(DESCRIBE_ACTIONS, ["*"])

    def grant_start(self, role: Role) -> None:
        role.add(START_ACTIONS, self.arns)

    def grant_stop(self, role: Role) -> None:
        role.add(STOP_ACTIONS, self.arns)
