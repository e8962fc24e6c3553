"""The worker loop: long-poll -> claim -> run (with heartbeat) -> settle, one message at a time.

Exactly-once in effect comes from the item, not the queue: SQS delivers at least once, and only the conditional
claim (QUEUED -> RUNNING, or a takeover of a RUNNING task whose heartbeat went stale) lets an attempt run; finish is
fenced by the attempt number, and the message is deleted only after the item is terminal. A crash anywhere leaves
either a QUEUED/stale-RUNNING item with a message that comes back (the task runs again), or a terminal item with a
message that comes back and is deleted unrun.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from core import logs
from core.message import MalformedMessage, TaskMessage
from core.store import Claimed, TaskStore, TransitionRejected
from core.task_types import Registry, TaskTypeError
from core.tasks import TaskRecord, TaskStatus, new_enqueue_id, now_ms

from .config import AdapterConfig
from .heartbeat import Heartbeat
from .queue import SQS_MAX_VISIBILITY_S, QueueClient, receive_count, sweep_dlq
from .rollout import EXIT_NEW_BUNDLE, RolloutWatch
from .runner import Attempt, AttemptOutcome, Control, Runner

log = logging.getLogger("adapter.worker")
EXIT_STOPPED = 0
RECEIVE_BACKOFF_S = 5.0


class IdleStop(Protocol):
    """adapter.autostop.AutoStop: the instance powers itself off after an idle window."""

    def note_busy(self) -> None: ...

    def maybe_stop(self) -> Any: ...


class Worker:
    def __init__(
        self,
        *,
        config: AdapterConfig,
        sqs: Any,
        s3: Any,
        store: TaskStore,
        registry: Registry,
        ssm: Any = None,
        autostop: IdleStop | None = None,
        running_env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.sqs = sqs
        self.store = store
        self.registry = registry
        self.queue = QueueClient(sqs, config.queue_url, config.dlq_url)
        self.runner = Runner(
            s3=s3,
            bucket=config.bucket,
            work_dir=config.work_dir,
            stop_grace_s=config.stop_grace_s,
            job_user=config.job_user or "",
        )
        self.autostop = autostop
        self.rollout = None
        if ssm is not None and config.bundle_param and config.running_bundle:
            self.rollout = RolloutWatch(
                ssm,
                param_name=config.bundle_param,
                running_bundle=config.running_bundle,
                config_param=config.config_param,
                running_env=running_env,
                every_s=config.rollout_check_s,
            )
        self.stopping = threading.Event()
        self._next_sweep = 0.0

    def request_stop(self) -> None:
        """First SIGTERM: finish nothing new; the running attempt is stopped and handed back by `settle`."""
        self.stopping.set()

    def run(self) -> int:
        logs.event(
            log,
            "worker_started",
            visibility_s=self.config.visibility_s,
            max_receives=self.config.retry.max_receives,
            rollout=self.rollout is not None,
        )
        self.runner.report_isolation()  # says so at start when jobs could reach the instance's credentials
        while not self.stopping.is_set():
            code = self.turn()
            if code is not None:
                return code
        logs.event(log, "worker_stopped")
        return EXIT_STOPPED

    def turn(self) -> int | None:
        """One loop turn: handle at most one message, or do the idle chores. Returns an exit code to stop with."""
        try:
            messages = self.queue.receive(self.config.wait_time_s)
        except Exception as err:  # SQS unreachable for a moment: do not spin, do not die
            logs.event(log, "receive_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            self.stopping.wait(RECEIVE_BACKOFF_S)
            return None
        for message in messages:
            if self.stopping.is_set():  # SIGTERM arrived during the long poll: hand the message straight back
                self.queue.set_visibility(message, 0)
                return None
            if self.autostop is not None:
                self.autostop.note_busy()
            try:
                self.handle(message)
            finally:
                if self.autostop is not None:
                    self.autostop.note_busy()  # the idle window starts when the task ends
            return None
        return self.idle()

    def idle(self) -> int | None:
        if self.rollout is not None and self.rollout.changed() is not None:
            return EXIT_NEW_BUNDLE  # systemd restarts us; ExecStartPre installs what the parameters now name
        clock = now_ms() / 1000
        if clock >= self._next_sweep:
            self._next_sweep = clock + self.config.dlq_sweep_s
            try:
                sweep_dlq(
                    self.store,
                    self.sqs,
                    self.config.dlq_url,
                    stale_after_ms=self.config.stale_after_ms,
                    hide_s=int(min(SQS_MAX_VISIBILITY_S, max(30, 2 * self.config.dlq_sweep_s))),
                )
            except Exception as err:
                logs.event(log, "dlq_sweep_error", logging.WARNING, error=f"{type(err).__name__}: {err}")
        if self.autostop is not None:
            self.autostop.maybe_stop()
        return None

    # -- one message ---------------------------------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        try:
            parsed = TaskMessage.parse(message.get("Body", ""))
        except MalformedMessage as poison:
            logs.event(
                log, "poison_message", logging.WARNING, reason=poison.reason, message_id=message.get("MessageId")
            )
            self.queue.to_dlq(message, poison.reason)
            return
        with logs.task_scope(parsed.task_id):
            try:
                self._handle(parsed, message)
            except Exception:
                # The loop must survive anything. The message comes back after its visibility timeout; if we held
                # the task, its heartbeat has stopped, so the next receive may take it over.
                logs.event(log, "handle_error", logging.ERROR, exc=True)

    def _handle(self, parsed: TaskMessage, message: dict[str, Any]) -> None:
        held = self.claim(parsed, message)
        if held is None:
            return
        logs.event(log, "claimed", attempt=held.attempts, receive_count=receive_count(message), type=held.type)
        try:
            task_type = self.registry.get(held.type)
            params = task_type.validate(held.params)
        except TaskTypeError as err:  # retrying cannot help: straight to the DLQ path
            self.store.finish(held, TaskStatus.FAILED, error=str(err))
            self.queue.to_dlq(message, str(err))
            return
        control = Control(self.stopping)
        with Heartbeat(
            store=self.store,
            sqs=self.sqs,
            queue_url=self.config.queue_url,
            receipt=message["ReceiptHandle"],
            held=held,
            interval_s=self.config.heartbeat_s,
            visibility_s=self.config.visibility_s,
            control=control,
        ):
            try:
                result = self.runner.run(held.task_id, task_type, params, control)
                if result.outcome is AttemptOutcome.SUCCEEDED and result.result_uri and result.uploaded:
                    # The completion marker, once the outputs are in S3: a worker that takes this task over after a
                    # crash from here on settles it SUCCEEDED with them instead of running the job again. An attempt
                    # that uploaded nothing goes straight to the finish (one write fewer for short tasks).
                    held = self.store.mark_completed(held, result.result_uri)
            except TransitionRejected:
                result = Attempt(AttemptOutcome.INTERRUPTED, interrupted="lost")
            except Exception as err:
                logs.event(log, "attempt_error", logging.ERROR, exc=True)
                result = Attempt(AttemptOutcome.FAILED, error=f"adapter error: {type(err).__name__}: {err}")
        self.settle(held, message, result, control)

    def claim(self, parsed: TaskMessage, message: dict[str, Any]) -> TaskRecord | None:
        """The claimed record, or None when this message must not run (and has been dealt with)."""
        stale_after_ms = self.config.stale_after_ms
        for first in (True, False):
            try:
                claimed = self.store.claim(
                    parsed.task_id,
                    worker=self.config.worker_id,
                    stale_after_ms=stale_after_ms,
                    enqueue_id=parsed.enqueue_id,
                )
            except TransitionRejected as rejected:
                item = rejected.item
            else:
                return self._taken(claimed, message)
            if item is None:
                self.queue.to_dlq(message, "names no known task")
                return None
            if not parsed.is_current_for(item):  # a duplicate or superseded copy: the current message runs it
                logs.event(log, "stale_message_deleted", enqueue_id=parsed.enqueue_id, current=item.enqueue_id)
                self.queue.delete(message)
                return None
            if item.terminal:  # duplicate delivery, or cancelled while queued: never run twice
                logs.event(log, "skipped_terminal", status=item.status.value, receive_count=receive_count(message))
                self.queue.delete(message)
                return None
            stale_in_ms = (item.heartbeat_at or 0) + stale_after_ms - now_ms()
            if item.cancel_requested and (item.status is TaskStatus.QUEUED or stale_in_ms < 0):
                # The cancel was accepted, then its worker went away: the cancel stands, the task does not run.
                try:
                    self.store.end_cancelled(parsed.task_id, stale_after_ms=stale_after_ms)
                except TransitionRejected:
                    continue  # it moved meanwhile: look again
                logs.event(log, "cancelled_unrun", attempt=item.attempts)
                self.queue.delete(message)
                return None
            if item.status is TaskStatus.RUNNING:
                # A holder that died right after its claim looks fresh for the few ms between SQS handing the
                # message out and the claim's write; wait those out instead of burning a receive.
                if first and stale_in_ms <= self.config.claim_grace_s * 1000:
                    if self.stopping.wait(max(0, stale_in_ms) / 1000 + 0.05):
                        self.queue.set_visibility(message, 0)
                        return None
                    continue
                logs.event(log, "held_elsewhere", holder=item.worker, stale_in_ms=stale_in_ms)
                self.queue.set_visibility(message, math.ceil(max(stale_in_ms, 1000) / 1000))
                return None
            # QUEUED yet rejected: it was requeued between our calls; the second try sees it
        return None

    def _taken(self, claimed: Claimed, message: dict[str, Any]) -> TaskRecord | None:
        """After a successful claim: settle a task whose dead worker had already completed it; say why a takeover
        used up an attempt."""
        held, before = claimed.held, claimed.before
        if claimed.completed_before:
            self.store.finish(held, TaskStatus.SUCCEEDED, result_uri=before.result_uri)
            self.queue.delete(message)
            logs.event(log, "settled_from_marker", attempt=held.attempts, completed_attempt=before.completed_attempt)
            return None
        if claimed.takeover:
            why = (
                f"attempt {before.attempts} on {before.worker} stopped heartbeating; attempt {held.attempts} took over"
            )
            self.store.note_takeover(held, why)
            logs.event(log, "took_over", logging.WARNING, previous_attempt=before.attempts, holder=before.worker)
        return held

    def settle(self, held: TaskRecord, message: dict[str, Any], result: Attempt, control: Control) -> None:
        """Record the attempt's outcome on the item (fenced by the held attempt), then decide the message's fate."""
        attempt, count = held.attempts, receive_count(message)
        if result.interrupted == "lost":
            logs.event(log, "attempt_lost", logging.WARNING, attempt=attempt)
            return  # another worker holds the task and its message now: touch neither
        try:
            if result.outcome is AttemptOutcome.SUCCEEDED:
                self.store.finish(held, TaskStatus.SUCCEEDED, result_uri=result.result_uri)
                self.queue.delete(message)
                logs.event(log, "succeeded", attempt=attempt, result_uri=result.result_uri)
            elif control.cancelled.is_set():
                self.store.finish(held, TaskStatus.CANCELLED, error=result.error)
                self.queue.delete(message)
                logs.event(log, "cancelled", attempt=attempt)
            elif result.interrupted == "stopping":
                self._hand_back_on_stop(held, message, f"the instance stopped during attempt {attempt}")
            elif self.config.retry.is_last(count):
                self.store.finish(held, TaskStatus.FAILED, error=result.error)
                logs.event(log, "failed", logging.WARNING, attempt=attempt, receive_count=count, error=result.error)
                self.queue.to_dlq(message, result.error or "failed")
            else:
                self._hand_back(held, message, count, result.error, now=False)
        except TransitionRejected as rejected:
            current = rejected.item
            logs.event(
                log,
                "settle_rejected",
                logging.WARNING,
                attempt=attempt,
                status=current.status.value if current else None,
                holder_attempt=current.attempts if current else None,
            )

    def _hand_back(
        self, held: TaskRecord, message: dict[str, Any], count: int, error: str | None, *, now: bool
    ) -> None:
        """RUNNING -> QUEUED and make the message visible: at once (instance stopping) or after the retry delay."""
        item = self.store.requeue(held, error=error)
        if item.cancel_requested:  # a cancel landed during the attempt: honour it instead of retrying
            self.store.cancel(held.task_id)
            self.queue.delete(message)
            logs.event(log, "cancelled", attempt=held.attempts)
            return
        self.queue.set_visibility(message, 0 if now else self.config.retry.delay_s(count))
        logs.event(
            log,
            "requeued",
            logging.INFO if now else logging.WARNING,
            attempt=held.attempts,
            receive_count=count,
            reason="instance stopping" if now else "retry",
            error=error,
        )

    def _hand_back_on_stop(self, held: TaskRecord, message: dict[str, Any], error: str) -> None:
        """A stop is never the task's fault, so it must not use up one of the message's receives (maxReceiveCount
        counts failures): send a fresh message, make it the task's current one in the requeue, then delete the old.
        A crash between the steps leaves a stale copy (deleted unrun) or the old message (taken over): never two
        runs, never a lost task. If the send fails, the old message is handed back instead and its receive is used."""
        fresh = TaskMessage(held.task_id, new_enqueue_id())
        try:
            self.queue.send(fresh)
        except Exception as err:
            logs.event(log, "resend_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            self._hand_back(held, message, receive_count(message), error, now=True)
            return
        item = self.store.requeue(held, error=error, enqueue_id=fresh.enqueue_id)
        self.queue.delete(message)
        if item.cancel_requested:  # a cancel landed during the attempt: the fresh message finds it CANCELLED
            self.store.cancel(held.task_id)
            logs.event(log, "cancelled", attempt=held.attempts)
            return
        logs.event(log, "requeued", attempt=held.attempts, reason="instance stopping", error=error)
