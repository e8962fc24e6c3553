"""TaskStore: one DynamoDB item per task in `task_store`, moved between states by conditional writes only.

Every transition is a single UpdateItem/PutItem whose ConditionExpression states what must still hold, so two
writers can never both win (no read-modify-write, no lost update, whatever the interleaving). `attempts` doubles as a
fencing token: a worker may only heartbeat or finish the attempt it claimed, so a worker that was presumed dead and
taken over cannot overwrite its successor's result.

Used by the orchestrator (create, cancel, read) and the adapter (claim, heartbeat, finish, requeue). Every read and
every transition returns a `TaskRecord`. boto3 only: it ships in the adapter bundle to the GPU instance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from .tasks import (
    RESULT_TTL_SECONDS,
    STATUS_INDEX,
    NotifyState,
    Page,
    TaskRecord,
    TaskStatus,
    from_dynamo,
    marker_key,
    new_enqueue_id,
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


@dataclass(frozen=True)
class Claimed:
    held: TaskRecord  # the attempt this worker now holds
    before: TaskRecord  # the item as it was: RUNNING here means a dead worker's attempt was taken over

    @property
    def takeover(self) -> bool:
        return self.before.status is TaskStatus.RUNNING

    @property
    def completed_before(self) -> bool:
        """The taken-over attempt had finished its job and uploaded its outputs (its completion marker)."""
        return self.takeover and self.before.completed_attempt == self.before.attempts


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
        submitted_by: str | None = None,
        notify_url: str | None = None,
    ) -> TaskRecord:
        """Put a new QUEUED item, owned by `submitted_by` (the caller's identity) when given; with `notify_url` (checked
        by the caller: core.webhook.check_url) its webhook starts PENDING. With an idempotency
        key, a marker item (`marker_key`) is written in the same transaction, so two concurrent submits with one key
        create exactly one task; the loser gets TransitionRejected carrying the winner's task."""
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
            submitted_by=submitted_by,
            notify_url=notify_url,
            notify_state=NotifyState.PENDING if notify_url else None,
            enqueue_id=new_enqueue_id(),
            enqueue_claimed_at=at,
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

    def claim_enqueue(self, task_id: str, *, lease_ms: int, at_ms: int | None = None) -> TaskRecord:
        """Take the right to send the task's message: a new `enqueue_id`, only while the task is QUEUED, unsent, and
        nobody else holds the right (or their lease of `lease_ms` ran out: that sender died). A message carrying an
        older enqueue_id is then a stale copy, which the adapter deletes unrun."""
        at = now_ms() if at_ms is None else at_ms
        return self._update(
            task_id,
            "claim the enqueue",
            "SET enqueue_id = :e, enqueue_claimed_at = :t",
            "#s = :queued AND attribute_not_exists(enqueued_at) AND "
            "(attribute_not_exists(enqueue_claimed_at) OR enqueue_claimed_at < :expired)",
            {":e": new_enqueue_id(), ":t": at, ":queued": TaskStatus.QUEUED.value, ":expired": at - lease_ms},
        )

    def release_enqueue(self, task: TaskRecord) -> None:
        """The send failed: let the next request claim the enqueue at once instead of after the lease."""
        self._on_enqueue(task, "release the enqueue", "REMOVE enqueue_claimed_at")

    def mark_enqueued(self, task: TaskRecord) -> None:
        """Record that the message of this enqueue_id was sent (a retried submit re-sends while this is missing)."""
        self._on_enqueue(task, "mark enqueued", "SET enqueued_at = :t", {":t": now_ms()})

    def claim(
        self,
        task_id: str,
        *,
        worker: str,
        stale_after_ms: int,
        enqueue_id: str | None = None,
        at_ms: int | None = None,
    ) -> Claimed:
        """QUEUED -> RUNNING, or take over a RUNNING task whose heartbeat is older than `stale_after_ms` (its worker
        died). Never a task with a cancel requested (`end_cancelled` settles those), and with `enqueue_id` (the
        message's) only for the task's current message. Returns the new record, whose `attempts` is this worker's
        fencing token, and what the item held before (a takeover, a completion marker)."""
        at = now_ms() if at_ms is None else at_ms
        current = "" if enqueue_id is None else " AND (attribute_not_exists(enqueue_id) OR enqueue_id = :eid)"
        extra = {} if enqueue_id is None else {":eid": enqueue_id}
        out = self._write(
            task_id,
            "claim",
            update="SET #s = :running, attempts = if_not_exists(attempts, :zero) + :one, worker = :w, "
            "started_at = :t, heartbeat_at = :t, updated_at = :t",
            condition="attribute_not_exists(cancel_requested) AND "
            "((#s = :queued) OR (#s = :running AND heartbeat_at < :stale))" + current,
            values={
                **extra,
                ":running": TaskStatus.RUNNING.value,
                ":queued": TaskStatus.QUEUED.value,
                ":zero": 0,
                ":one": 1,
                ":w": worker,
                ":t": at,
                ":stale": at - stale_after_ms,
            },
            returns="ALL_OLD",  # the new record follows from the old one; the old one tells a takeover apart
        )
        before = TaskRecord.from_item(out["Attributes"])
        held = before.evolve(
            status=TaskStatus.RUNNING,
            attempts=before.attempts + 1,
            worker=worker,
            started_at=at,
            heartbeat_at=at,
            updated_at=at,
        )
        return Claimed(held, before)

    def end_cancelled(self, task_id: str, *, stale_after_ms: int) -> TaskRecord:
        """A task whose cancel was accepted but whose worker is gone (QUEUED again, or RUNNING with a stale
        heartbeat) ends CANCELLED without running again."""
        at = now_ms()
        return self._update(
            task_id,
            "end as cancelled",
            "SET #s = :cancelled, finished_at = :t, updated_at = :t REMOVE worker",
            "cancel_requested = :yes AND (#s = :queued OR (#s = :running AND heartbeat_at < :stale))",
            {
                ":cancelled": TaskStatus.CANCELLED.value,
                ":queued": TaskStatus.QUEUED.value,
                ":running": TaskStatus.RUNNING.value,
                ":yes": True,
                ":t": at,
                ":stale": at - stale_after_ms,
            },
        )

    def mark_completed(self, held: TaskRecord, result_uri: str) -> TaskRecord:
        """The completion marker: the held attempt's job exited 0 and its outputs are uploaded under `result_uri`.
        A worker that takes the task over after a crash finds it and settles SUCCEEDED without running the job
        again."""
        changes = {"completed_attempt": held.attempts, "result_uri": result_uri}
        self._set(held, "mark completed", changes)
        return held.evolve(**changes)

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
        hourly_usd: float | None = None,
        slots: int = 1,
    ) -> TaskRecord:
        """RUNNING -> SUCCEEDED | FAILED | CANCELLED, only for the attempt we hold. Writes only what changes and
        asks for nothing back: the new record is `held` with those changes.

        The same write records `gpu_seconds`, the held attempt's started_at -> finished_at, and with `hourly_usd`
        (the instance's price; each task holds one of its `slots` GPUs) `cost_usd`. Only the settled attempt counts:
        time of attempts that were requeued (a retry, a hand-back on a stop) is not in the task's gpu_seconds, and
        shows as idle overhead in the cost report, beside the billed running intervals (core/hosts.py)."""
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, got {status.value}")
        at = now_ms() if at_ms is None else at_ms
        changes: dict[str, Any] = {"status": status, "finished_at": at, "updated_at": at}
        changes["ttl"] = at // 1000 + RESULT_TTL_SECONDS
        if held.started_at is not None:
            changes["gpu_seconds"] = max(0, at - held.started_at) / 1000
            if hourly_usd is not None:
                changes["cost_usd"] = changes["gpu_seconds"] * hourly_usd / 3600 / max(1, slots)
        if result_uri is not None:
            changes["result_uri"] = result_uri
        if error is not None:
            changes["error"] = error[:ERROR_MAX_CHARS]
        self._set(held, f"finish as {status.value}", changes)
        return held.evolve(**changes)

    def requeue(self, held: TaskRecord, *, error: str | None = None, enqueue_id: str | None = None) -> TaskRecord:
        """RUNNING -> QUEUED for the attempt we hold (a retryable failure, or the instance is stopping). With
        `enqueue_id`, the caller has sent a fresh message of that id: it becomes the task's current one (and the
        message this attempt came from a stale copy)."""
        at = now_ms()
        sets = ["#s = :queued", "updated_at = :t"]
        values: dict[str, Any] = {**_held_values(held), ":queued": TaskStatus.QUEUED.value, ":t": at}
        names: dict[str, str] = {}
        if error is not None:
            sets.append("#e = :e")
            values[":e"] = error[:ERROR_MAX_CHARS]
            names["#e"] = "error"
        if enqueue_id is not None:
            sets += ["enqueue_id = :eid", "enqueued_at = :t"]
            values[":eid"] = enqueue_id
        update = "SET " + ", ".join(sets) + " REMOVE worker, heartbeat_at"
        return self._update(held.task_id, "requeue", update, _HELD, values, names=names)

    def note_takeover(self, held: TaskRecord, error: str) -> None:
        """Say on the item why an attempt was used up by a worker that died (it counts as one of the task's tries)."""
        self._set(held, "note the takeover", {"error": error[:ERROR_MAX_CHARS]})

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

    def _on_enqueue(self, task: TaskRecord, wanted: str, update: str, values: Mapping[str, Any] | None = None) -> None:
        """`update` the item while its enqueue is still `task`'s own (the same enqueue_id), asking for nothing back."""
        fenced = {**(values or {}), ":e": task.enqueue_id}
        self._write(task.task_id, wanted, update=update, condition="enqueue_id = :e", values=fenced, returns="NONE")

    def _update(self, *args: Any, **kwargs: Any) -> TaskRecord:
        """`_write` (same arguments) asking for the new item, as a record."""
        return TaskRecord.from_item(self._write(*args, **kwargs)["Attributes"])

    def _write(
        self,
        task_id: str,
        wanted: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
        returns: str = "ALL_NEW",
    ) -> dict[str, Any]:
        try:
            return dict(
                self.table.update_item(
                    Key={"task_id": task_id},
                    UpdateExpression=update,
                    ConditionExpression=f"attribute_exists(task_id) AND ({condition})",
                    ExpressionAttributeNames=_used_names(update + condition, {"#s": "status", **(names or {})}),
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


def _used_names(expressions: str, names: dict[str, str]) -> dict[str, str]:
    """DynamoDB refuses ExpressionAttributeNames an expression does not use."""
    used = set(re.findall(r"#\w+", expressions))
    return {k: v for k, v in names.items() if k in used}


def _held_values(held: TaskRecord) -> dict[str, Any]:
    return {":running": TaskStatus.RUNNING.value, ":w": held.worker, ":a": held.attempts}


def _deserialize(raw: Mapping[str, Any]) -> TaskRecord:
    """A low-level item (as ReturnValuesOnConditionCheckFailure hands it back) as a record."""
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    return TaskRecord.from_item({k: de.deserialize(v) for k, v in raw.items()})
