"""The GPU instances as EC2 reports them, and the one helper that starts or stops them.

Used by the shutdown Lambda (the controller) and the orchestrator. Clients are injected low-level boto3 EC2 clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError


class InstanceState(StrEnum):
    """EC2's state names, plus UNKNOWN for an id DescribeInstances does not return (or could not be asked about)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"

    @property
    def gone(self) -> bool:
        """No longer an instance anyone can start (or never was one)."""
        return self in (InstanceState.UNKNOWN, InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN)

    @property
    def up(self) -> bool:
        return self in (InstanceState.PENDING, InstanceState.RUNNING)


@dataclass(frozen=True)
class Instance:
    instance_id: str
    state: InstanceState
    launch_time: float | None = None  # EC2 LaunchTime: the last start, not the first launch


def read_instances(ec2: Any, instance_ids: Sequence[str]) -> tuple[Instance, ...]:
    """A filter, not InstanceIds=: an unknown id then comes back as UNKNOWN instead of failing the whole call."""
    if not instance_ids:
        return ()
    found: dict[str, Instance] = {}
    for page in _describe_pages(ec2, [{"Name": "instance-id", "Values": list(instance_ids)}]):
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                try:
                    state = InstanceState(raw["State"]["Name"])
                except ValueError:  # a state name EC2 adds later: treat it as busy-in-transition, never act on it
                    state = InstanceState.PENDING
                launch = raw.get("LaunchTime")
                found[raw["InstanceId"]] = Instance(
                    raw["InstanceId"], state, launch.timestamp() if launch is not None else None
                )
    return tuple(found.get(i, Instance(i, InstanceState.UNKNOWN)) for i in instance_ids)


def _describe_pages(ec2: Any, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """DescribeInstances page by page (NextToken by hand: the same calls a paginator makes)."""
    kwargs: dict[str, Any] = {"Filters": filters}
    while True:
        page = ec2.describe_instances(**kwargs)
        yield page
        token = page.get("NextToken")
        if not token:
            return
        kwargs["NextToken"] = token


class Change(StrEnum):
    START = "START"
    STOP = "STOP"


# Instance-level refusals that mean "not now / not there": reported, never raised; the caller tries again later.
# IncorrectInstanceState is EC2's answer to starting a `stopping` instance (or stopping a `pending` one).
BENIGN_ERRORS = frozenset({"IncorrectInstanceState", "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


@dataclass(frozen=True)
class ChangeResult:
    instance_id: str
    previous: str | None = None
    current: str | None = None
    refused: str | None = None  # the EC2 error code of a benign refusal

    def to_log(self) -> dict[str, str]:
        if self.refused:
            return {"instance_id": self.instance_id, "error": self.refused, "note": "left for the next scheduled run"}
        return {"instance_id": self.instance_id, "from": str(self.previous), "to": str(self.current)}


def change_state(ec2: Any, change: Change, instance_ids: Sequence[str]) -> list[ChangeResult]:
    """StartInstances / StopInstances, one call per instance, so one instance in a bad state cannot hold back
    another. Benign refusals (BENIGN_ERRORS) come back as results; anything else raises."""
    call = ec2.start_instances if change is Change.START else ec2.stop_instances
    key = "StartingInstances" if change is Change.START else "StoppingInstances"
    results: list[ChangeResult] = []
    for instance_id in instance_ids:
        try:
            moved = call(InstanceIds=[instance_id])[key][0]
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code not in BENIGN_ERRORS:
                raise
            results.append(ChangeResult(instance_id, refused=code))
            continue
        results.append(ChangeResult(instance_id, moved["PreviousState"]["Name"], moved["CurrentState"]["Name"]))
    return results
