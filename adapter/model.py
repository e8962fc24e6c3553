"""The task model: one DynamoDB item per task in `task_store`, moved between states by conditional writes only.

Every transition is a single UpdateItem/PutItem whose ConditionExpression states what must still hold, so two
writers can never both win (no read-modify-write, no lost update, whatever the interleaving). `attempts` doubles as a
fencing token: a worker may only heartbeat or finish the attempt it claimed, so a worker that was presumed dead and
taken over cannot overwrite its successor's result.

Used by the orchestrator (create, cancel, read) and the adapter (claim, heartbeat, finish, requeue).
Stdlib + boto3 only: it ships in the adapter bundle to the GPU instance.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

STATUS_INDEX = "status-created_at-index"
RESULT_TTL_SECONDS = 30 * 24 * 3600  # items expire a month after they end (DynamoDB TTL on `ttl`)


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TransitionRejected(Exception):
    """The item was not in the state the transition requires (someone else moved it first)."""

    def __init__(self, task_id: str, wanted: str, item: Mapping[str, Any] | None) -> None:
        self.task_id = task_id
        self.item = dict(item) if item else None
        current = self.item.get("status") if self.item else "absent"
        super().__init__(f"task {task_id}: cannot {wanted} (status is {current})")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_task_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, so ids sort by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def now_ms() -> int:
    return int(time.time() * 1000)


def _plain(value: Any) -> Any:
    """DynamoDB returns numbers as Decimal; hand callers ints/floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dynamo(value: Any) -> Any:
    """boto3's resource layer refuses floats; store them as Decimal."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dynamo(v) for v in value]
    return value


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    cursor: dict[str, Any] | None  # LastEvaluatedKey, or None on the last page


class TaskStore:
    """Conditional transitions over the task table. `table` is a boto3 DynamoDB Table resource (injected)."""

    def __init__(self, table: Any, *, status_index: str = STATUS_INDEX) -> None:
        self.table = table
        self.status_index = status_index

    @classmethod
    def from_env(cls, session: Any = None) -> TaskStore:
        import boto3

        resource = (session or boto3).resource("dynamodb")
        return cls(
            resource.Table(os.environ["TASK_TABLE_NAME"]),
            status_index=os.environ.get("TASK_STATUS_INDEX", STATUS_INDEX),
        )

    # -- reads ---------------------------------------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"task_id": task_id}, ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def list_by_status(self, status: TaskStatus, *, limit: int = 50, cursor: dict[str, Any] | None = None) -> Page:
        """Newest first, through the status-created_at GSI."""
        kwargs: dict[str, Any] = {
            "IndexName": self.status_index,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": status.value},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            kwargs["ExclusiveStartKey"] = _dynamo(cursor)
        out = self.table.query(**kwargs)
        last = out.get("LastEvaluatedKey")
        return Page([_plain(i) for i in out.get("Items", [])], _plain(last) if last else None)

    # -- transitions ---------------------------------------------------------------------------------------------
    def create(
        self,
        *,
        task_type: str,
        params: Mapping[str, Any],
        idempotency_key: str | None = None,
        task_id: str | None = None,
        at_ms: int | None = None,
    ) -> dict[str, Any]:
        """Put a new QUEUED item. With an idempotency key, a marker item `idem#<key>` is written in the same
        transaction, so two concurrent submits with one key create exactly one task; the loser gets
        TransitionRejected carrying the winner's task."""
        at = now_ms() if at_ms is None else at_ms
        item: dict[str, Any] = {
            "task_id": task_id or new_task_id(at),
            "status": TaskStatus.QUEUED.value,
            "type": task_type,
            "params": dict(params),
            "created_at": at,
            "updated_at": at,
            "attempts": 0,
            "ttl": at // 1000 + RESULT_TTL_SECONDS,
        }
        if idempotency_key is None:
            self.table.put_item(Item=_dynamo(item), ConditionExpression="attribute_not_exists(task_id)")
            return item
        item["idempotency_key"] = idempotency_key
        # The resource's own client: it (de)serializes attribute values for us, as Table methods do.
        client = self.table.meta.client
        name = self.table.name
        marker = {"task_id": f"idem#{idempotency_key}", "ref": item["task_id"], "ttl": item["ttl"]}
        try:
            client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": name,
                            "Item": _dynamo(doc),
                            # Names spelled out: moto's transaction path mis-handles a condition without them.
                            "ConditionExpression": "attribute_not_exists(#k)",
                            "ExpressionAttributeNames": {"#k": "task_id"},
                        }
                    }
                    for doc in (marker, item)
                ]
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            existing = self.find_by_idempotency_key(idempotency_key)
            if existing is None:  # cancelled for another reason (throttling, conflict): let the caller retry
                raise
            raise TransitionRejected(existing["task_id"], "create (idempotency key already used)", existing) from None
        return item

    def find_by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        marker = self.get(f"idem#{key}")
        return self.get(marker["ref"]) if marker else None

    def mark_enqueued(self, task_id: str) -> None:
        """Record that the task's message was sent (a retried submit re-sends when this is missing)."""
        self.table.update_item(
            Key={"task_id": task_id},
            UpdateExpression="SET enqueued_at = :t",
            ExpressionAttributeValues={":t": now_ms()},
        )

    def claim(self, task_id: str, *, worker: str, stale_after_ms: int, at_ms: int | None = None) -> dict[str, Any]:
        """QUEUED -> RUNNING, or take over a RUNNING task whose heartbeat is older than `stale_after_ms`
        (its worker died). Returns the new item; its `attempts` is this worker's fencing token."""
        at = now_ms() if at_ms is None else at_ms
        return self._update(
            task_id,
            "claim",
            "SET #s = :running, attempts = if_not_exists(attempts, :zero) + :one, worker = :w, started_at = :t, "
            "heartbeat_at = :t, updated_at = :t REMOVE cancel_requested",
            "(#s = :queued) OR (#s = :running AND heartbeat_at < :stale)",
            {
                ":running": TaskStatus.RUNNING.value,
                ":queued": TaskStatus.QUEUED.value,
                ":zero": 0,
                ":one": 1,
                ":w": worker,
                ":t": at,
                ":stale": at - stale_after_ms,
            },
        )

    def heartbeat(self, task_id: str, *, worker: str, attempt: int, at_ms: int | None = None) -> dict[str, Any]:
        """Refresh heartbeat_at for the attempt we hold; the returned item tells us whether a cancel was asked."""
        at = now_ms() if at_ms is None else at_ms
        return self._update(
            task_id,
            "heartbeat",
            "SET heartbeat_at = :t, updated_at = :t",
            "#s = :running AND worker = :w AND attempts = :a",
            {":running": TaskStatus.RUNNING.value, ":w": worker, ":a": attempt, ":t": at},
        )

    def finish(
        self,
        task_id: str,
        *,
        worker: str,
        attempt: int,
        status: TaskStatus,
        result_uri: str | None = None,
        error: str | None = None,
        at_ms: int | None = None,
    ) -> dict[str, Any]:
        """RUNNING -> SUCCEEDED | FAILED | CANCELLED, only for the attempt we hold."""
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, got {status.value}")
        at = now_ms() if at_ms is None else at_ms
        sets = ["#s = :to", "finished_at = :t", "updated_at = :t", "#ttl = :ttl"]
        values: dict[str, Any] = {
            ":to": status.value,
            ":t": at,
            ":running": TaskStatus.RUNNING.value,
            ":w": worker,
            ":a": attempt,
            ":ttl": at // 1000 + RESULT_TTL_SECONDS,
        }
        names = {"#ttl": "ttl"}  # DynamoDB rejects names an expression does not use: add them with their use
        if result_uri is not None:
            sets.append("result_uri = :r")
            values[":r"] = result_uri
        if error is not None:
            sets.append("#e = :e")
            values[":e"] = error[:4000]
            names["#e"] = "error"
        return self._update(
            task_id,
            f"finish as {status.value}",
            "SET " + ", ".join(sets),
            "#s = :running AND worker = :w AND attempts = :a",
            values,
            names=names,
        )

    def requeue(self, task_id: str, *, worker: str, attempt: int, error: str | None = None) -> dict[str, Any]:
        """RUNNING -> QUEUED for the attempt we hold (a retryable failure, or the instance is stopping)."""
        at = now_ms()
        sets = "SET #s = :queued, updated_at = :t REMOVE worker, heartbeat_at"
        values: dict[str, Any] = {
            ":queued": TaskStatus.QUEUED.value,
            ":running": TaskStatus.RUNNING.value,
            ":w": worker,
            ":a": attempt,
            ":t": at,
        }
        names: dict[str, str] = {}
        if error is not None:
            sets = "SET #s = :queued, updated_at = :t, #e = :e REMOVE worker, heartbeat_at"
            values[":e"] = error[:4000]
            names["#e"] = "error"
        return self._update(
            task_id, "requeue", sets, "#s = :running AND worker = :w AND attempts = :a", values, names=names
        )

    def fail_unclaimed(self, task_id: str, *, error: str) -> dict[str, Any]:
        """QUEUED|RUNNING -> FAILED without holding it: the message went to the DLQ path (poison, out of retries)."""
        at = now_ms()
        return self._update(
            task_id,
            "fail",
            "SET #s = :failed, #e = :e, finished_at = :t, updated_at = :t",
            "#s IN (:queued, :running)",
            {
                ":failed": TaskStatus.FAILED.value,
                ":queued": TaskStatus.QUEUED.value,
                ":running": TaskStatus.RUNNING.value,
                ":e": error[:4000],
                ":t": at,
            },
            names={"#e": "error"},
        )

    def cancel(self, task_id: str) -> dict[str, Any]:
        """A QUEUED task becomes CANCELLED at once (it will never run); a RUNNING one gets cancel_requested, which its
        adapter sees on the next heartbeat and acts on. Terminal tasks raise TransitionRejected."""
        at = now_ms()
        for _ in range(3):  # the task may move QUEUED -> RUNNING between the two conditional writes
            try:
                return self._update(
                    task_id,
                    "cancel",
                    "SET #s = :cancelled, finished_at = :t, updated_at = :t",
                    "#s = :queued",
                    {":cancelled": TaskStatus.CANCELLED.value, ":queued": TaskStatus.QUEUED.value, ":t": at},
                )
            except TransitionRejected:
                pass
            try:
                return self._update(
                    task_id,
                    "cancel",
                    "SET cancel_requested = :yes, updated_at = :t",
                    "#s = :running",
                    {":yes": True, ":running": TaskStatus.RUNNING.value, ":t": at},
                )
            except TransitionRejected as rejected:
                if rejected.item is None or TaskStatus(rejected.item["status"]).terminal:
                    raise
        raise TransitionRejected(task_id, "cancel (status kept changing)", self.get(task_id))

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _update(
        self,
        task_id: str,
        wanted: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            out = self.table.update_item(
                Key={"task_id": task_id},
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(task_id) AND ({condition})",
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues=_dynamo(values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = err.response.get("Item")
            if old is not None:
                from boto3.dynamodb.types import TypeDeserializer

                de = TypeDeserializer()
                old = {k: de.deserialize(v) for k, v in old.items()}
            raise TransitionRejected(task_id, wanted, _plain(old) if old else None) from None
        return _plain(out["Attributes"])
