"""While a task runs: keep its message invisible and its item's heartbeat fresh, and notice a cancel.

Order matters. The item's `heartbeat_at` is written first, the message's visibility extended second: the message
can then only become visible again (to a second worker) at least one visibility timeout after the last heartbeat,
so whoever receives it next finds the heartbeat stale and may take the task over. The reverse order would leave a
window where the message is visible but the heartbeat still looks fresh.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from core import logs
from core.store import TaskStore, TransitionRejected
from core.tasks import TaskRecord

from .runner import Control

log = logging.getLogger("adapter.heartbeat")


class Heartbeat:
    def __init__(
        self,
        *,
        store: TaskStore,
        sqs: Any,
        queue_url: str,
        receipt: str,
        held: TaskRecord,
        interval_s: float,
        visibility_s: int,
        control: Control,
    ) -> None:
        self.store = store
        self.sqs = sqs
        self.queue_url = queue_url
        self.receipt = receipt
        self.held = held
        self.task_id = held.task_id
        self.attempt = held.attempts
        self.interval_s = interval_s
        self.visibility_s = visibility_s
        self.control = control
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{held.task_id}", daemon=True)

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
