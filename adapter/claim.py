"""Which message may run: the conditional claim of its task's item, and what becomes of a message that must not run
(adapter/README.md, "Exactly once, in effect", steps 1 and 2)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from core import logs
from core.message import TaskMessage
from core.store import Claimed, TaskStore, TransitionRejected
from core.tasks import TaskRecord, TaskStatus, now_ms

from .config import AdapterConfig
from .queue import QueueClient, receive_count

log = logging.getLogger("adapter.worker")


@dataclass(eq=False)  # a service object: compared by identity
class Claims:
    """The worker's claims (`stopping`: the worker's stop, which cuts a wait for a dead holder short). `finish`: the
    worker's settle write (TaskStore.finish with the instance's price, and the task's metrics); `ended`: told of a
    task this ends without holding it."""

    config: AdapterConfig
    store: TaskStore
    queue: QueueClient
    stopping: threading.Event
    _: KW_ONLY
    finish: Callable[..., TaskRecord]
    ended: Callable[[TaskRecord], None]

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
                    self.ended(self.store.end_cancelled(parsed.task_id, stale_after_ms=stale_after_ms))
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
            self.finish(held, TaskStatus.SUCCEEDED, result_uri=before.result_uri)
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
