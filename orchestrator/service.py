"""What the HTTP handlers do, without HTTP: submit, read, list, cancel, health.

Crash safety of submit (write, then send, then mark):
1. The item is written QUEUED first (with an idempotency key: item + `idem#<key>` marker in one transaction),
   holding the identity of its first message (`enqueue_id`) and, with it, the right to send it.
2. The task's message (core.message, carrying that enqueue_id) is sent. If the send fails, the caller gets 503 and
   - without a key, the task is marked FAILED at once (nobody could ever re-send it, so it must not sit QUEUED);
   - with a key, the right to send is released and the task stays QUEUED without `enqueued_at`: repeating the
     request with the same key sends it.
3. `enqueued_at` is recorded.
A repeat that finds the task QUEUED without `enqueued_at` takes the right to send (a conditional write, so of two
racing repeats exactly one sends) unless another request holds it and its lease (ENQUEUE_LEASE_MS) has not run out:
then it answers 503 `enqueue_in_progress` and a later repeat settles it. Taking the right gives the task a new
enqueue_id, so a message the previous holder may still have sent is a stale copy the adapter deletes unrun.
A repeat whose task already has `enqueued_at` (or has moved on) enqueues nothing and returns the first task.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core import logs
from core.instances import InstanceState
from core.message import TaskMessage
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord, TaskStatus

from .gpu import GpuStarter

log = logging.getLogger("orchestrator.service")
AwsError = (ClientError, BotoCoreError)
ENQUEUE_LEASE_MS = 30_000  # a request that took the right to send and went silent this long has died
TASK_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # a ULID; also keeps `idem#...` marker items out of reach

# Given (type, params), returns the params to store (normalized) or raises InvalidTask.
Validator = Callable[[str, Mapping[str, Any]], dict[str, Any]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class InvalidTask(Exception):
    """Unknown type or params that do not fit the type's declaration."""


def task_view(record: TaskRecord) -> dict[str, Any]:
    """The task as the API shows it: every attribute it has, less DynamoDB's expiry bookkeeping."""
    return {k: v for k, v in record.to_item().items() if k != "ttl"}


def encode_cursor(key: Mapping[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode().rstrip("=")


def decode_cursor(raw: str, status: TaskStatus) -> dict[str, Any]:
    """A cursor is the GSI's LastEvaluatedKey; accept only that shape, for the status being listed."""
    try:
        key = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise ApiError(400, "bad_cursor", "cursor is not one this service returned") from None
    if (
        not isinstance(key, dict)
        or set(key) != {"task_id", "status", "created_at"}
        or not isinstance(key["task_id"], str)
        or not TASK_ID.match(key["task_id"])
        or key["status"] != status.value
        or not isinstance(key["created_at"], int)
        or isinstance(key["created_at"], bool)
        # epoch ms are far inside 1e38; past DynamoDB's 38 digits the query fails in boto3 (a decimal error)
        or not -(10**38) < key["created_at"] < 10**38
    ):
        raise ApiError(400, "bad_cursor", "cursor is not one this service returned for this status")
    return key


@dataclass(frozen=True)
class Submitted:
    task: dict[str, Any]
    replayed: bool  # True: the idempotency key was seen before and this is the first request's task
    gpu: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class TaskService:
    """The handlers' logic over injected clients: `sqs` a boto3 SQS client, `store` over the task table."""

    store: TaskStore
    sqs: Any
    queue_url: str
    dlq_url: str
    starter: GpuStarter
    validate: Validator

    def submit(self, task_type: str, params: Mapping[str, Any], idempotency_key: str | None) -> Submitted:
        try:
            clean = self.validate(task_type, params)
        except InvalidTask as err:
            raise ApiError(422, "invalid_task", str(err)) from None
        try:
            task = self.store.create(task_type=task_type, params=clean, idempotency_key=idempotency_key)
        except TransitionRejected as seen:
            return self._replay(seen, task_type, clean)
        except AwsError as err:
            logs.event(log, "task_write_failed", logging.ERROR, error=str(err))
            raise ApiError(503, "store_unavailable", "could not record the task; nothing was queued") from None
        self._enqueue(task, keyed=idempotency_key is not None)
        return Submitted(task_view(task), False, self._start_gpu())

    def _replay(self, seen: TransitionRejected, task_type: str, params: Mapping[str, Any]) -> Submitted:
        task = seen.item
        if task is None:  # the marker exists but its task does not: should not happen; let the client retry
            raise ApiError(503, "idempotency_conflict", "idempotency key is being used concurrently; retry")
        if task.type != task_type or dict(task.params) != dict(params):
            raise ApiError(
                409,
                "idempotency_key_reused",
                f"idempotency_key was already used for a different request (task {task.task_id})",
            )
        if task.status is TaskStatus.QUEUED and task.enqueued_at is None:
            # The first request's send failed, or it crashed, or it is sending right now: take over only if not.
            try:
                task = self.store.claim_enqueue(task.task_id, lease_ms=ENQUEUE_LEASE_MS)
            except TransitionRejected as busy:
                now = busy.item or task
                if now.status is TaskStatus.QUEUED and now.enqueued_at is None:
                    raise ApiError(
                        503, "enqueue_in_progress", f"task {task.task_id} is being queued by another request; retry"
                    ) from None
                return Submitted(task_view(now), True, {})
            except AwsError as err:
                logs.event(log, "claim_enqueue_failed", logging.ERROR, task_id=task.task_id, error=str(err))
                raise ApiError(503, "store_unavailable", "could not read the task; retry") from None
            self._enqueue(task, keyed=True)
            return Submitted(task_view(task), True, self._start_gpu())
        return Submitted(task_view(task), True, {})

    def _enqueue(self, task: TaskRecord, *, keyed: bool) -> None:
        task_id = task.task_id
        try:
            body = TaskMessage(task_id, task.enqueue_id).encode()
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
        except AwsError as err:
            logs.event(log, "enqueue_failed", logging.ERROR, task_id=task_id, error=str(err))
            if keyed:
                try:
                    self.store.release_enqueue(task)
                except (TransitionRejected, *AwsError) as release_err:  # the lease then runs out by itself
                    logs.event(log, "release_enqueue_failed", logging.WARNING, task_id=task_id, error=str(release_err))
                raise ApiError(
                    503,
                    "enqueue_failed",
                    f"task {task_id} recorded but not queued; repeat the request with the same "
                    "idempotency_key to queue it",
                ) from None
            try:
                self.store.fail_unclaimed(task_id, error=f"enqueue failed: {err}")
            except (TransitionRejected, *AwsError) as fail_err:
                logs.event(log, "mark_failed_failed", logging.ERROR, task_id=task_id, error=str(fail_err))
            raise ApiError(503, "enqueue_failed", f"task {task_id} could not be queued and was marked FAILED") from None
        try:
            self.store.mark_enqueued(task)
        except (TransitionRejected, *AwsError) as err:
            # Queued all the same. A keyed repeat after the lease re-sends under a new enqueue_id, which makes this
            # message a stale copy: the task still runs once, from the newer message.
            logs.event(log, "mark_enqueued_failed", logging.WARNING, task_id=task_id, error=str(err))
        logs.event(log, "task_enqueued", task_id=task_id, type=task.type)

    def _start_gpu(self) -> dict[str, str]:
        return {k: v.value for k, v in self.starter.ensure_started().items()}

    def get(self, task_id: str) -> dict[str, Any]:
        if not TASK_ID.match(task_id):
            raise ApiError(404, "not_found", f"no task {task_id}")
        try:
            item = self.store.get(task_id)
        except AwsError as err:
            logs.event(log, "task_read_failed", logging.ERROR, task_id=task_id, error=str(err))
            raise ApiError(503, "store_unavailable", f"could not read task {task_id}; retry") from None
        if item is None:
            raise ApiError(404, "not_found", f"no task {task_id}")
        return task_view(item)

    def list(self, status: TaskStatus, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        start = decode_cursor(cursor, status) if cursor else None
        try:
            page = self.store.list_by_status(status, limit=limit, cursor=start)
        except AwsError as err:
            logs.event(log, "task_list_failed", logging.ERROR, status=status.value, error=str(err))
            raise ApiError(503, "store_unavailable", "could not list tasks; retry") from None
        return [task_view(i) for i in page.items], encode_cursor(page.cursor)

    def cancel(self, task_id: str) -> dict[str, Any]:
        self.get(task_id)  # 404 for ids that do not exist (and for marker items)
        try:
            return task_view(self.store.cancel(task_id))
        except AwsError as err:
            logs.event(log, "task_cancel_failed", logging.ERROR, task_id=task_id, error=str(err))
            raise ApiError(503, "store_unavailable", f"could not cancel task {task_id}; retry") from None
        except TransitionRejected as rejected:
            item = rejected.item
            if item is not None and item.status is TaskStatus.CANCELLED:
                return task_view(item)  # cancelling twice is not an error
            status = item.status.value if item else "absent"
            raise ApiError(409, "not_cancellable", f"task {task_id} is {status}") from None

    def health(self) -> tuple[bool, dict[str, Any]]:
        report: dict[str, Any] = {}
        ok = True
        for name, url in (("queue", self.queue_url), ("dlq", self.dlq_url)):
            try:
                attrs = self.sqs.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )["Attributes"]
                report[name] = {
                    "visible": int(attrs["ApproximateNumberOfMessages"]),
                    "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
                }
            except AwsError as err:
                ok = False
                report[name] = {"error": str(err)}
        try:
            report["gpu"] = {k: v.value for k, v in self.starter.describe().items()}
        except AwsError as err:
            ok = False
            report["gpu"] = {"error": str(err)}
        if ok and any(v == InstanceState.UNKNOWN.value for v in report["gpu"].values()):
            ok = False  # a configured instance id that EC2 does not know: the config is wrong
        report["gpu_start_retrying"] = self.starter.retrying()
        return ok, report
