"""While a task runs: keep its message invisible and its item's heartbeat fresh, and notice a cancel.

Order matters. The item's `heartbeat_at` is written first, the message's visibility extended second: the message
can then only become visible again (to a second worker) at least one visibility timeout after the last heartbeat,
so whoever receives it next finds the heartbeat stale and may take the task over. The reverse order would leave a
window where the message is visible but the heartbeat still looks fresh.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from core import logs
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord

from .runner import Control

log = logging.getLogger("adapter.heartbeat")


@dataclass(kw_only=True)
class Heartbeat:
    """A context manager: a daemon thread beats every `interval_s` while the block runs."""

    store: TaskStore
    sqs: Any
    queue_url: str
    receipt: str  # the message's receipt handle: its visibility is what the beat extends
    held: TaskRecord
    interval_s: float
    visibility_s: int
    control: Control
    _done: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self.task_id, self.attempt = self.held.task_id, self.held.attempts
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.task_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)  # at most one in-flight AWS call

    def _run(self) -> None:
        with logs.task_scope(self.task_id):
            while not self._done.wait(self.interval_s):
                self.beat()

    def beat(self) -> None:
        """One heartbeat. Transient AWS errors are logged and retried next interval (there are several per
        visibility window); a rejected heartbeat means the attempt is no longer ours."""
        try:
            item = self.store.heartbeat(self.held)
        except TransitionRejected as rejected:
            current = rejected.item
            logs.event(
                log,
                "heartbeat_lost",
                logging.WARNING,
                status=current.status.value if current else None,
                holder=current.worker if current else None,
                holder_attempt=current.attempts if current else None,
                attempt=self.attempt,
            )
            self.control.lost.set()
            return
        except Exception as err:
            logs.event(log, "heartbeat_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            return
        if item.cancel_requested and not self.control.cancelled.is_set():
            logs.event(log, "cancel_seen", attempt=self.attempt)
            self.control.cancelled.set()
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=self.receipt, VisibilityTimeout=self.visibility_s
            )
        except Exception as err:
            # Past SQS's 12 h visibility limit, or the receipt is stale. The item's heartbeat still fences us.
            logs.event(log, "visibility_extend_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
