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

from . import logs
from .model import TaskStore, TransitionRejected
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
        task_id: str,
        worker: str,
        attempt: int,
        interval_s: float,
        visibility_s: int,
        control: Control,
    ) -> None:
        self.store = store
        self.sqs = sqs
        self.queue_url = queue_url
        self.receipt = receipt
        self.task_id = task_id
        self.worker = worker
        self.attempt = attempt
        self.interval_s = interval_s
        self.visibility_s = visibility_s
        self.control = control
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{task_id}", daemon=True)

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
            item = self.store.heartbeat(self.task_id, worker=self.worker, attempt=self.attempt)
        except TransitionRejected as rejected:
            current = rejected.item or {}
            logs.event(
                log,
                "heartbeat_lost",
                logging.WARNING,
                status=current.get("status"),
                holder=current.get("worker"),
                holder_attempt=current.get("attempts"),
                attempt=self.attempt,
            )
            self.control.lost.set()
            return
        except Exception as err:
            logs.event(log, "heartbeat_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            return
        if item.get("cancel_requested") and not self.control.cancelled.is_set():
            logs.event(log, "cancel_seen", attempt=self.attempt)
            self.control.cancelled.set()
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=self.receipt, VisibilityTimeout=self.visibility_s
            )
        except Exception as err:
            # Past SQS's 12 h visibility limit, or the receipt is stale. The item's heartbeat still fences us.
            logs.event(log, "visibility_extend_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
