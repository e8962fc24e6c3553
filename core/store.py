"""TaskStore: one DynamoDB item per task in `task_store`, moved between states by conditional writes only.

Every transition is a single UpdateItem/PutItem whose ConditionExpression states what must still hold, so two
writers can never both win (no read-modify-write, no lost update, whatever the interleaving). `attempts` doubles as a
fencing token: a worker may only heartbeat or finish the attempt it claimed, so a worker that was presumed dead and
taken over cannot overwrite its successor's result.

Used by the orchestrator (create, cancel, read) and the adapter (claim, heartbeat, finish, requeue). Every read and
every transition returns a `TaskRecord`. boto3 only: it ships in the adapter bundle to the GPU instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from .tasks import (
    RESULT_TTL_SECONDS,
    STATUS_INDEX,
    Page,
    TaskRecord,
    TaskStatus,
    from_dynamo,
    marker_key,
    new_task_id,
    now_ms,
    to_dynamo,
)

ERROR_MAX_CHARS = 4000  # an error message is stored truncated: the item stays far below DynamoDB's 400 KB


class TransitionRejected(Exception):
    """The item was not in the state the transition requires (someone else moved it first). `item` is what the
    item held when the write was refused (None: no such task)."""

    def __init__(self, task_id: str, wanted: str, item: TaskRecord | None) -> None:
        self.task_id = task_id
        self.item = item
        current = item.status.value if item else "absent"
        super().__init__(f"task {task_id}: cannot {wanted} (status is {current})")


class TaskStore:
    """Conditional transitions over the task table. `table` is a boto3 DynamoDB Table resource (injected)."""

    def __init__(self, table: Any, *, status_index: str = STATUS_INDEX) -> None:
        self.table = table
        self.status_index = status_index

    # -- reads ---------------------------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        item = self.table.get_item(Key={"task_id": task_id}, ConsistentRead=True).get("Item")
        return TaskRecord.from_item(item) if item and "status" in item else None

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
            kwargs["ExclusiveStartKey"] = to_dynamo(cursor)
        out = self.table.query(**kwargs)
        last = out.get("LastEvaluatedKey")
        return Page([TaskRecord.from_item(i) for i in out.get("Items", [])], from_dynamo(last) if last else None)

    # -- transitions ---------------------------------------------------------------------------------------------
    def create(
        self,
        *,
        task_type: str,
        params: Mapping[str, Any],
        idempotency_key: str | None = None,
        task_id: str | None = None,
        at_ms: int | None = None,
    ) -> TaskRecord:
        """Put a new QUEUED item. With an idempotency key, a marker item (`marker_key`) is written in the same
        transaction, so two concurrent submits with one key create exactly one task; the loser gets
        TransitionRejected carrying the winner's task."""
        at = now_ms() if at_ms is None else at_ms
        record = TaskRecord(
            task_id=task_id or new_task_id(at),
            status=TaskStatus.QUEUED,
            type=task_type,
            params=dict(params),
            created_at=at,
            updated_at=at,
            attempts=0,
            idempotency_key=idempotency_key,
            ttl=at // 1000 + RESULT_TTL_SECONDS,
        )
        item = to_dynamo(record.to_item())
        if idempotency_key is None:
            self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(task_id)")
            return record
        marker = {"task_id": marker_key(idempotency_key), "ref": record.task_id, "ttl": record.ttl}
        try:
            # The resource's own client: it (de)serializes attribute values for us, as Table methods do.
            self.table.meta.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table.name,
                            "Item": doc,
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
            raise TransitionRejected(existing.task_id, "create (idempotency key already used)", existing) from None
        return record

    def find_by_idempotency_key(self, key: str) -> TaskRecord | None:
        marker = self.table.get_item(Key={"task_id": marker_key(key)}, ConsistentRead=True).get("Item")
        return self.get(str(marker["ref"])) if marker else None

    def mark_enqueued(self, task_id: str) -> None:
        """Record that the task's message was sent (a retried submit re-sends when this is missing)."""
        self.table.update_item(
            Key={"task_id": task_id},
            UpdateExpression="SET enqueued_at = :t",
            ExpressionAttributeValues={":t": now_ms()},
        )

    def claim(self, task_id: str, *, worker: str, stale_after_ms: int, at_ms: int | None = None) -> TaskRecord:
        """QUEUED -> RUNNING, or take over a RUNNING task whose heartbeat is older than `stale_after_ms`
        (its worker died). Returns the new record; its `attempts` is this worker's fencing token."""
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

    def heartbeat(self, held: TaskRecord, *, at_ms: int | None = None) -> TaskRecord:
        """Refresh heartbeat_at for the attempt we hold; the returned record tells us whether a cancel was asked."""
        at = now_ms() if at_ms is None else at_ms
        return self._update(
            held.task_id,
            "heartbeat",
            "SET heartbeat_at = :t, updated_at = :t",
            _HELD,
            {**_held_values(held), ":t": at},
        )

    def finish(
        self,
        held: TaskRecord,
        status: TaskStatus,
        *,
        result_uri: str | None = None,
        error: str | None = None,
        at_ms: int | None = None,
    ) -> TaskRecord:
        """RUNNING -> SUCCEEDED | FAILED | CANCELLED, only for the attempt we hold. Writes only what changes and
        asks for nothing back: the new record is `held` with those changes."""
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, got {status.value}")
        at = now_ms() if at_ms is None else at_ms
        changes: dict[str, Any] = {"status": status, "finished_at": at, "updated_at": at}
        changes["ttl"] = at // 1000 + RESULT_TTL_SECONDS
        if result_uri is not None:
            changes["result_uri"] = result_uri
        if error is not None:
            changes["error"] = error[:ERROR_MAX_CHARS]
        self._set(held, f"finish as {status.value}", changes)
        return held.evolve(**changes)

    def requeue(self, held: TaskRecord, *, error: str | None = None) -> TaskRecord:
        """RUNNING -> QUEUED for the attempt we hold (a retryable failure, or the instance is stopping)."""
        sets = "SET #s = :queued, updated_at = :t REMOVE worker, heartbeat_at"
        values: dict[str, Any] = {**_held_values(held), ":queued": TaskStatus.QUEUED.value, ":t": now_ms()}
        names: dict[str, str] = {}
        if error is not None:
            sets = "SET #s = :queued, updated_at = :t, #e = :e REMOVE worker, heartbeat_at"
            values[":e"] = error[:ERROR_MAX_CHARS]
            names["#e"] = "error"
        return self._update(held.task_id, "requeue", sets, _HELD, values, names=names)

    def fail_unclaimed(self, task_id: str, *, error: str) -> TaskRecord:
        """QUEUED|RUNNING -> FAILED without holding it: the message went to the DLQ path (poison, out of retries)."""
        return self._update(
            task_id,
            "fail",
            "SET #s = :failed, #e = :e, finished_at = :t, updated_at = :t",
            "#s IN (:queued, :running)",
            {
                ":failed": TaskStatus.FAILED.value,
                ":queued": TaskStatus.QUEUED.value,
                ":running": TaskStatus.RUNNING.value,
                ":e": error[:ERROR_MAX_CHARS],
                ":t": now_ms(),
            },
            names={"#e": "error"},
        )

    def cancel(self, task_id: str) -> TaskRecord:
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
                if rejected.item is None or rejected.item.terminal:
                    raise
        raise TransitionRejected(task_id, "cancel (status kept changing)", self.get(task_id))

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _set(self, held: TaskRecord, wanted: str, changes: Mapping[str, Any]) -> None:
        """SET exactly `changes` on the attempt we hold, asking for nothing back (the caller knows the result)."""
        names = {f"#{k}": k for k in changes}
        values = {f":{k}": v.value if isinstance(v, TaskStatus) else v for k, v in changes.items()}
        self._write(
            held.task_id,
            wanted,
            update="SET " + ", ".join(f"#{k} = :{k}" for k in changes),
            condition=_HELD,
            names=names,
            values={**values, **_held_values(held)},
            returns="NONE",
        )

    def _update(
        self,
        task_id: str,
        wanted: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
    ) -> TaskRecord:
        out = self._write(task_id, wanted, update=update, condition=condition, names=names, values=values)
        return TaskRecord.from_item(out["Attributes"])

    def _write(
        self,
        task_id: str,
        wanted: str,
        *,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        returns: str = "ALL_NEW",
    ) -> dict[str, Any]:
        try:
            return dict(
                self.table.update_item(
                    Key={"task_id": task_id},
                    UpdateExpression=update,
                    ConditionExpression=f"attribute_exists(task_id) AND ({condition})",
                    ExpressionAttributeNames={"#s": "status", **(names or {})},
                    ExpressionAttributeValues=to_dynamo(values),
                    ReturnValues=returns,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = err.response.get("Item")
            raise TransitionRejected(task_id, wanted, _deserialize(old) if old else None) from None


# The fence every write of a held attempt carries: still RUNNING, still ours, still this attempt.
_HELD = "#s = :running AND worker = :w AND attempts = :a"


def _held_values(held: TaskRecord) -> dict[str, Any]:
    return {":running": TaskStatus.RUNNING.value, ":w": held.worker, ":a": held.attempts}


def _deserialize(raw: Mapping[str, Any]) -> TaskRecord:
    """A low-level item (as ReturnValuesOnConditionCheckFailure hands it back) as a record."""
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    return TaskRecord.from_item({k: de.deserialize(v) for k, v in raw.items()})
