"""The GPU hosts table (`gpu_hosts`): what the controller needs to know about an instance beyond what EC2 says.

Two kinds of item, keyed (`instance_id`, `sk`):
- `sk = "live"`: the adapter's liveness (`seen_at`, its `worker` id, written every LIVENESS_SECONDS from its loop)
  and the controller's stuck-worker recovery steps (`rebooted_at`, `recovered_stop_at`). A RUNNING task whose
  `worker` is the one recorded here is that instance's (its heartbeats count as the host's liveness too).
- `sk = "run#<launch ms>"`: one billed running interval, from EC2's LaunchTime (the last start) to the last time
  the controller saw the instance running (`last_seen`, set on every run: idempotent, so a duplicate invocation
  changes nothing). `gpuq cost` sums these as the GPU time billed; what no task used is the idle overhead.

Low-level DynamoDB client (injected), as the controller's other reads; the adapter passes its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

LIVE = "live"
RUN_PREFIX = "run#"


@dataclass(frozen=True)
class Liveness:
    instance_id: str
    seen_at: int | None = None  # epoch ms of the adapter's last loop turn
    worker: str | None = None  # the adapter's worker id (TaskRecord.worker of the tasks it holds)
    rebooted_at: int | None = None  # the controller rebooted it for being stuck (once per stuck episode)
    recovered_stop_at: int | None = None  # the controller stopped it: the reboot did not help


@dataclass(frozen=True)
class RunInterval:
    """One billed running interval of one instance. `slots`: GPUs it has (tasks it can run at once)."""

    instance_id: str
    started_at: int
    last_seen: int
    slots: int = 1

    @property
    def seconds(self) -> float:
        return max(0, self.last_seen - self.started_at) / 1000.0


def _n(item: dict[str, Any], name: str) -> int | None:
    raw = item.get(name)
    return int(raw["N"]) if raw and "N" in raw else None


def _s(item: dict[str, Any], name: str) -> str | None:
    raw = item.get(name)
    return str(raw["S"]) if raw and "S" in raw else None


class HostStore:
    def __init__(self, dynamodb: Any, table_name: str) -> None:
        self.dynamodb = dynamodb
        self.table_name = table_name

    # -- the adapter -------------------------------------------------------------------------------------------------
    def seen(self, instance_id: str, *, worker: str, at_ms: int) -> None:
        """The adapter's loop is alive (never moves `seen_at` backwards)."""
        try:
            self.dynamodb.update_item(
                TableName=self.table_name,
                Key={"instance_id": {"S": instance_id}, "sk": {"S": LIVE}},
                UpdateExpression="SET seen_at = :t, worker = :w",
                ConditionExpression="attribute_not_exists(seen_at) OR seen_at < :t",
                ExpressionAttributeValues={":t": {"N": str(at_ms)}, ":w": {"S": worker}},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    # -- the controller ----------------------------------------------------------------------------------------------
    def liveness(self, instance_ids: Sequence[str]) -> dict[str, Liveness]:
        """The live items of `instance_ids` (an instance never seen has none: absent from the result)."""
        found: dict[str, Liveness] = {}
        ids = list(dict.fromkeys(instance_ids))
        for start in range(0, len(ids), 100):  # BatchGetItem: at most 100 keys per call
            keys = [{"instance_id": {"S": i}, "sk": {"S": LIVE}} for i in ids[start : start + 100]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                out = self.dynamodb.batch_get_item(RequestItems=request)
                for item in out.get("Responses", {}).get(self.table_name, []):
                    found[item["instance_id"]["S"]] = Liveness(
                        instance_id=item["instance_id"]["S"],
                        seen_at=_n(item, "seen_at"),
                        worker=_s(item, "worker"),
                        rebooted_at=_n(item, "rebooted_at"),
                        recovered_stop_at=_n(item, "recovered_stop_at"),
                    )
                request = out.get("UnprocessedKeys") or {}
        return found

    def note_recovery(self, instance_id: str, step: str, *, at_ms: int) -> None:
        """Record a recovery step: `step` is "rebooted_at" or "recovered_stop_at"."""
        if step not in ("rebooted_at", "recovered_stop_at"):
            raise ValueError(f"unknown recovery step {step!r}")
        self.dynamodb.update_item(
            TableName=self.table_name,
            Key={"instance_id": {"S": instance_id}, "sk": {"S": LIVE}},
            UpdateExpression=f"SET {step} = :t",
            ExpressionAttributeValues={":t": {"N": str(at_ms)}},
        )

    def clear_recovery(self, instance_id: str) -> None:
        """The host made progress again: its next stuck episode starts with a reboot."""
        self.dynamodb.update_item(
            TableName=self.table_name,
            Key={"instance_id": {"S": instance_id}, "sk": {"S": LIVE}},
            UpdateExpression="REMOVE rebooted_at, recovered_stop_at",
        )

    def record_running(self, instance_id: str, *, launched_ms: int, seen_ms: int, slots: int = 1) -> None:
        """The controller saw `instance_id` running at `seen_ms` in the interval that began at `launched_ms`."""
        try:
            self.dynamodb.update_item(
                TableName=self.table_name,
                Key={"instance_id": {"S": instance_id}, "sk": {"S": f"{RUN_PREFIX}{launched_ms:013d}"}},
                UpdateExpression="SET started_at = :l, last_seen = :t, slots = :n",
                ConditionExpression="attribute_not_exists(last_seen) OR last_seen < :t",
                ExpressionAttributeValues={
                    ":l": {"N": str(launched_ms)},
                    ":t": {"N": str(seen_ms)},
                    ":n": {"N": str(slots)},
                },
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    # -- the cost report ---------------------------------------------------------------------------------------------
    def intervals_since(self, since_ms: int) -> Iterator[RunInterval]:
        """Every running interval that was still running at or after `since_ms` (a Scan: the table holds one small
        item per instance start, so a report reads little)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "begins_with(sk, :run) AND last_seen >= :since",
            "ExpressionAttributeValues": {":run": {"S": RUN_PREFIX}, ":since": {"N": str(since_ms)}},
        }
        while True:
            out = self.dynamodb.scan(**kwargs)
            for item in out.get("Items", []):
                yield RunInterval(
                    instance_id=item["instance_id"]["S"],
                    started_at=_n(item, "started_at") or 0,
                    last_seen=_n(item, "last_seen") or 0,
                    slots=_n(item, "slots") or 1,
                )
            if not out.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
