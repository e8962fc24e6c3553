"""What the HTTP handlers do, without HTTP: submit, read, list, cancel, health.

After a submit queues its message, the controller (the shutdown Lambda) is nudged with one asynchronous invoke
(orchestrator/gpu.py); it alone starts and stops GPUs. The response's `gpu` says whether the nudge got through.

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
An idempotency key belongs to the caller who first used it: another caller repeating it gets 409, not the task.
The same key with another type, params or notify_url is another request: 409 too.

A task may name a webhook (`notify_url`), told when it ends. The URL is checked here (core.webhook.check_url:
https, a public host, no credentials) before anything is written; each delivery checks the address again.

Ownership: every task records its `submitted_by` (the caller's identity, orchestrator/identity.py). Reading,
cancelling and listing act only on the caller's own tasks unless the caller is an admin; another caller's task
answers 404, as if it did not exist. A non-admin caller's `s3_input` params must name keys under its own upload
prefix (`inputs/<slug>/`), so nobody can have a task read someone else's input.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core import logs
from core.errors import ApiError
from core.instances import InstanceState
from core.message import TaskMessage
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord, TaskStatus
from core.webhook import WebhookRefused, check_url

from .api_metrics import SubmitMetrics
from .gpu import SKIPPED, ControllerNotifier, GpuStates
from .identity import Caller

log = logging.getLogger("orchestrator.service")
AwsError = (ClientError, BotoCoreError)
ENQUEUE_LEASE_MS = 30_000  # a request that took the right to send and went silent this long has died
TASK_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # a ULID; also keeps `idem#...` marker items out of reach

# Given (type, params), returns the params to store (normalized) or raises InvalidTask.
Validator = Callable[[str, Mapping[str, Any]], dict[str, Any]]
# Given a type, the names of its params that are S3 input keys (core.task_types.TaskType.s3_inputs).
InputsOf = Callable[[str], Sequence[str]]
TaskViews = list[dict[str, Any]]
ListPage = tuple[TaskViews, str | None]  # task views, next_cursor
LIST_SCAN_BUDGET = 1000  # index items one filtered list request reads at most before it answers with a cursor
INDEX_PAGE = 100  # index items per query of a filtered list


def _no_inputs(_: str) -> Sequence[str]:
    return ()


class InvalidTask(Exception):
    """Unknown type or params that do not fit the type's declaration."""


# Shown together as `notify` rather than one by one; `ttl` is DynamoDB's expiry bookkeeping.
_NOT_SHOWN = frozenset({"ttl", "notify_state", "notify_attempts", "notify_error", "notified_at"})


def task_view(record: TaskRecord) -> dict[str, Any]:
    """The task as the API shows it: every attribute it has, its webhook's delivery as `notify` (when it named one)."""
    view = {k: v for k, v in record.to_item().items() if k not in _NOT_SHOWN}
    if record.notify_url is not None:
        view["notify"] = {
            "state": record.notify_state.value if record.notify_state is not None else None,
            "attempts": record.notify_attempts or 0,
            "error": record.notify_error,
            "at": record.notified_at,
        }
    return view


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


def _index_key(item: TaskRecord) -> dict[str, Any]:
    """The status index's key of an item: what the index's LastEvaluatedKey would be after it."""
    return {"task_id": item.task_id, "status": item.status.value, "created_at": item.created_at}


def _same_owner(submitted_by: str | None, caller: Caller) -> bool:
    # A task from before ownership was recorded counts as an admin's (bearer mode's one caller is one).
    return submitted_by == caller.id or (submitted_by is None and caller.admin)


@dataclass(frozen=True)
class Submitted:
    task: dict[str, Any]
    replayed: bool  # True: the idempotency key was seen before and this is the first request's task
    gpu: dict[str, str]  # what the controller was told (orchestrator.gpu.Nudge.view)


@dataclass(frozen=True, kw_only=True)
class TaskService:
    """The handlers' logic over injected clients: `sqs` a boto3 SQS client, `store` over the task table,
    `controller` nudges the controller after a submit, `gpus` reads the instances for /healthz."""

    store: TaskStore
    sqs: Any
    queue_url: str
    dlq_url: str
    controller: ControllerNotifier
    gpus: GpuStates
    validate: Validator
    inputs_of: InputsOf = _no_inputs
    list_scan_budget: int = LIST_SCAN_BUDGET
    metrics: SubmitMetrics = SubmitMetrics()
    allow_loopback_webhooks: bool = False  # WEBHOOK_ALLOW_LOOPBACK: local environments only

    def submit(
        self,
        task_type: str,
        params: Mapping[str, Any],
        idempotency_key: str | None,
        caller: Caller,
        notify_url: str | None = None,
    ) -> Submitted:
        try:
            clean = self.validate(task_type, params)
        except InvalidTask as err:
            raise ApiError(422, "invalid_task", str(err)) from None
        self._check_inputs(task_type, clean, caller)
        self._check_notify(notify_url)
        try:
            task = self.store.create(
                task_type=task_type,
                params=clean,
                idempotency_key=idempotency_key,
                submitted_by=caller.id,
                notify_url=notify_url,
            )
        except TransitionRejected as seen:
            return self._replay(seen, task_type, clean, notify_url, caller)
        except AwsError as err:
            logs.event(log, "task_write_failed", logging.ERROR, error=str(err))
            raise ApiError(503, "store_unavailable", "could not record the task; nothing was queued") from None
        self._enqueue(task, keyed=idempotency_key is not None)
        return Submitted(task_view(task), False, self._nudge(task.task_id))

    def _check_inputs(self, task_type: str, params: Mapping[str, Any], caller: Caller) -> None:
        if caller.admin:
            return
        for name in self.inputs_of(task_type):
            value = params.get(name)
            if isinstance(value, str) and not value.startswith(caller.input_prefix):
                raise ApiError(
                    422,
                    "invalid_task",
                    f"invalid params for {task_type}: {name}: not one of your uploads (keys under "
                    f"{caller.input_prefix}; POST /uploads gives one)",
                )

    def _check_notify(self, notify_url: str | None) -> None:
        if notify_url is None:
            return
        try:
            check_url(notify_url, allow_loopback=self.allow_loopback_webhooks)
        except WebhookRefused as err:
            raise ApiError(422, "invalid_notify_url", f"notify_url: {err}") from None

    def _replay(
        self,
        seen: TransitionRejected,
        task_type: str,
        params: Mapping[str, Any],
        notify_url: str | None,
        caller: Caller,
    ) -> Submitted:
        task = seen.item
        if task is None:  # the marker exists but its task does not: should not happen; let the client retry
            raise ApiError(503, "idempotency_conflict", "idempotency key is being used concurrently; retry")
        if not _same_owner(task.submitted_by, caller):
            # Not the task, nor its id: the key says nothing about another caller's work.
            raise ApiError(409, "idempotency_key_reused", "idempotency_key was already used by another caller")
        if task.type != task_type or dict(task.params) != dict(params) or task.notify_url != notify_url:
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
                return Submitted(task_view(now), True, SKIPPED.view())
            except AwsError as err:
                logs.event(log, "claim_enqueue_failed", logging.ERROR, task_id=task.task_id, error=str(err))
                raise ApiError(503, "store_unavailable", "could not read the task; retry") from None
            self._enqueue(task, keyed=True)
            return Submitted(task_view(task), True, self._nudge(task.task_id))
        return Submitted(task_view(task), True, SKIPPED.view())

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
        self.metrics.accepted(task.type, task_id)

    def _nudge(self, task_id: str) -> dict[str, str]:
        return self.controller.notify(task_id).view()

    def owned(self, task_id: str, caller: Caller) -> TaskRecord:
        """The task, if it exists and the caller may see it; 404 otherwise (the same answer for both)."""
        if not TASK_ID.match(task_id):
            raise ApiError(404, "not_found", f"no task {task_id}")
        try:
            item = self.store.get(task_id)
        except AwsError as err:
            logs.event(log, "task_read_failed", logging.ERROR, task_id=task_id, error=str(err))
            raise ApiError(503, "store_unavailable", f"could not read task {task_id}; retry") from None
        if item is None or not caller.owns(item.submitted_by):
            raise ApiError(404, "not_found", f"no task {task_id}")
        return item

    def get(self, task_id: str, caller: Caller) -> dict[str, Any]:
        return task_view(self.owned(task_id, caller))

    def list(self, status: TaskStatus, limit: int, cursor: str | None, caller: Caller) -> ListPage:
        """Newest first. An admin gets the index's pages as they are. For anyone else the index is read in pages
        and filtered here (the store's query has no owner filter): the answer's cursor is the index key of the last
        item read, so no item is skipped or repeated. A page may hold fewer than `limit` items, even none, and still
        have a next_cursor: after `list_scan_budget` index items a request answers with what it found, so one
        request stays bounded however many of other callers' tasks lie in between. Follow next_cursor to null."""
        start = decode_cursor(cursor, status) if cursor else None
        try:
            if caller.admin:
                page = self.store.list_by_status(status, limit=limit, cursor=start)
                return [task_view(i) for i in page.items], encode_cursor(page.cursor)
            return self._list_own(status, limit, start, caller)
        except AwsError as err:
            logs.event(log, "task_list_failed", logging.ERROR, status=status.value, error=str(err))
            raise ApiError(503, "store_unavailable", "could not list tasks; retry") from None

    def _list_own(self, status: TaskStatus, limit: int, start: dict[str, Any] | None, caller: Caller) -> ListPage:
        found: TaskViews = []
        read = 0
        key = start
        # Pages are bounded too, not only items: an index page may come back empty with a LastEvaluatedKey.
        for _ in range(self.list_scan_budget // INDEX_PAGE + 2):
            page = self.store.list_by_status(status, limit=INDEX_PAGE, cursor=key)
            for position, item in enumerate(page.items, 1):
                read += 1
                if caller.owns(item.submitted_by):
                    found.append(task_view(item))
                more = position < len(page.items) or page.cursor is not None
                if (len(found) == limit or read >= self.list_scan_budget) and more:
                    return found, encode_cursor(_index_key(item))
            if page.cursor is None:
                return found, None
            key = page.cursor
        return found, encode_cursor(key)

    def cancel(self, task_id: str, caller: Caller) -> dict[str, Any]:
        self.owned(task_id, caller)  # 404 for ids that do not exist, marker items, and other callers' tasks
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
            report["gpu"] = {k: v.value for k, v in self.gpus.describe().items()}
        except (*AwsError, LookupError) as err:  # LookupError: the configured fleet does not exist
            ok = False
            report["gpu"] = {"error": str(err)}
        if ok and any(v == InstanceState.UNKNOWN.value for v in report["gpu"].values()):
            ok = False  # a configured instance id that EC2 does not know: the config is wrong
        # A failed nudge leaves `ok` alone: the schedule still starts the GPU within a minute, and a 503 here would
        # take a working submit path out of service for a slower start.
        report["controller"] = self.controller.health()
        return ok, report
