"""The worker loop: long-poll -> claim -> run (with heartbeat) -> settle, each message in a slot of its own.

Exactly-once in effect comes from the item, not the queue: SQS delivers at least once, and only the conditional
claim (QUEUED -> RUNNING, or a takeover of a RUNNING task whose heartbeat went stale) lets an attempt run; finish is
fenced by the attempt number, and the message is deleted only after the item is terminal. A crash anywhere leaves
either a QUEUED/stale-RUNNING item with a message that comes back (the task runs again), or a terminal item with a
message that comes back and is deleted unrun.

Slots (adapter/slots.py, one per GPU): a receive asks for at most the free slots' worth of messages, and each runs
in a slot's thread through the one single-message path below (`handle`: claim, run with its own Heartbeat and
Control, settle or hand back). A turn ends when a slot is free to receive for, so a one-slot host handles one
message per turn, to its end, as it always has. The idle chores (rollout check, DLQ sweep, autostop) run only on a
turn that received nothing while every slot was idle. Every turn, and every second of a wait for a free slot, the
loop also makes its own timed writes (`_periodic`): its liveness (adapter/liveness.py) and the minute's metrics
(adapter/metrics.py); the settle write (`finish`) records the attempt's GPU time and cost, and the task's metrics.

A stop (first SIGTERM) and a departure (fleet mode: the metadata says the instance is leaving service, see
adapter/fleet.py `Departure`) end every running attempt through the same path: each slot's job is stopped and its
task handed back with a fresh message, so neither uses up one of the task's receives; a message a long poll brings
in meanwhile is claimed and handed back the same way, unrun. A stop then exits; a departure keeps the process idle,
receiving nothing, until the instance stops or terminates under it (systemd's SIGTERM then ends it with 0) or the
metadata says it is back in service. Exiting would only have systemd restart it into the same notice; after a
return to the warm pool the next boot starts it afresh, and it reads the metadata before its first receive.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from core import logs
from core.message import MalformedMessage, TaskMessage
from core.store import TaskStore, TransitionRejected
from core.task_types import Registry, TaskTypeError
from core.tasks import TaskRecord, TaskStatus, new_enqueue_id

from .claim import Claims
from .config import AdapterConfig
from .every import Every
from .fleet import Departure, Membership
from .heartbeat import Heartbeat
from .liveness import Liveness
from .metadata import Metadata, MetadataWatch
from .metrics import Meter
from .queue import SQS_MAX_VISIBILITY_S, QueueClient, receive_count, sweep_dlq
from .rollout import EXIT_NEW_BUNDLE, RolloutWatch
from .runner import Attempt, AttemptOutcome, Control, Runner
from .slots import Slots

log = logging.getLogger("adapter.worker")
EXIT_STOPPED = 0
RECEIVE_BACKOFF_S = 5.0


class IdleStop(Protocol):
    """adapter.autostop.AutoStop: the instance stops itself after an idle window."""

    def note_busy(self) -> None: ...

    def maybe_stop(self) -> Any: ...


def _runners(config: AdapterConfig, s3: Any) -> list[Runner]:
    """One Runner per slot."""
    several = config.slots > 1  # one slot: its jobs see the GPUs the adapter sees, in runner-<pid>, as before
    return [
        Runner(
            s3=s3,
            bucket=config.bucket,
            work_dir=config.work_dir,
            stop_grace_s=config.stop_grace_s,
            job_user=config.job_user or "",
            slot=i if several else None,
            gpu=str(i) if several else None,
        )
        for i in range(config.slots)
    ]


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
        membership: Membership | None = None,
        metadata: Metadata | None = None,
        liveness: Liveness | None = None,
        meter: Meter | None = None,
    ) -> None:
        """`membership` and `metadata`: fleet mode's group membership and the instance metadata it is watched
        through (both None elsewhere: no protection, no watch). `liveness`: the hosts table's record of this loop
        (None without HOSTS_TABLE_NAME); `meter`: the metrics (default: EMF lines on stdout)."""
        self.config = config
        self.sqs = sqs
        self.store = store
        self.registry = registry
        self.queue = QueueClient(sqs, config.queue_url, config.dlq_url)
        runners = _runners(config, s3)
        self.membership = membership
        self.slots = Slots(runners, on_busy=self._busy)
        self.runner = runners[0]
        self.departure = Departure(membership, watch_s=config.metadata_watch_s)
        self.watch = None
        if metadata is not None:
            self.watch = MetadataWatch(
                metadata,
                every_s=config.metadata_watch_s,
                in_group=membership is not None,
                on_reading=self.departure.note,
            )
        self.autostop = autostop
        self.rollout = None
        if ssm is not None and config.bundle_param and config.running_bundle:
            self.rollout = RolloutWatch(
                ssm,
                param_name=config.bundle_param,
                running_bundle=config.running_bundle,
                config_param=config.config_param,
                running_env=running_env or {},
                every_s=config.rollout_check_s,
            )
        self.liveness = liveness
        self.meter = meter or Meter(namespace=config.metrics_namespace, slots=config.slots, worker=config.worker_id)
        self.stopping = threading.Event()
        self.claims = Claims(config, store, self.queue, self.stopping, finish=self.finish, ended=self.meter.task_ended)
        self._sweep = Every(config.dlq_sweep_s)

    def request_stop(self) -> None:
        """First SIGTERM: receive nothing new; every running attempt is stopped and handed back by `settle`."""
        self.stopping.set()

    def job_pgids(self) -> list[int]:
        """The process groups of the jobs running now (the second SIGTERM kills them)."""
        return self.slots.pgids()

    def run(self) -> int:
        logs.event(
            log,
            "worker_started",
            visibility_s=self.config.visibility_s,
            max_receives=self.config.retry.max_receives,
            rollout=self.rollout is not None,
            slots=len(self.slots),
            fleet=self.config.fleet_name,
        )
        self.runner.report_isolation()  # says so at start when jobs could reach the instance's credentials
        if self.watch is not None:
            self.watch.start()  # its first reading comes before the first receive
        try:
            while not self.stopping.is_set():
                code = self.turn()
                if code is not None:
                    return code
        finally:
            while not self.slots.wait_idle(1.0):  # every slot has settled or handed its task back
                pass
            if self.watch is not None:
                self.watch.stop()
            self.meter.close()  # the last interval's line, and every line still buffered, go out
        logs.event(log, "worker_stopped")
        return EXIT_STOPPED

    def turn(self) -> int | None:
        """One loop turn: receive for the free slots and start their messages, or do the idle chores (or, leaving
        service, the departure's). Returns when a slot is free again; returns an exit code to stop with."""
        self._periodic()
        self.slots.sync()  # the scale-in protection follows busy and idle (retrying a change that failed)
        if self.departure.leaving.is_set():
            self.departure.turn(self.slots, self.stopping)
            return None
        if not self.slots.free():
            self._until(self.slots.wait_free)
            return None
        try:
            messages = self.queue.receive(self.config.wait_time_s, self.slots.free())
        except Exception as err:  # SQS unreachable for a moment: do not spin, do not die
            logs.event(log, "receive_failed", logging.WARNING, error=f"{type(err).__name__}: {err}")
            self.stopping.wait(RECEIVE_BACKOFF_S)
            return None
        if not messages:
            return self.idle() if not self.slots.busy() else None
        for message in messages:  # during a stop or a departure each is claimed and handed straight back
            self.slots.start(functools.partial(self._in_slot, message), str(message.get("MessageId")))
        self._until(self.slots.wait_free)
        return None

    def _until(self, wait: Callable[[float], bool]) -> None:
        while not wait(1.0):  # in steps: the loop's thread stays responsive to signals
            self._periodic()

    def _periodic(self) -> None:
        """The loop's own timed writes, from its thread: a hung loop stops them. Liveness (at most every
        LIVENESS_SECONDS), then the minute's metrics."""
        if self.liveness is not None:
            self.liveness.tick()
        self.meter.tick()

    def _busy(self, busy: bool) -> None:
        """Slots' turn busy / turn idle: scale-in protection on before the first claim, off as the last one ends
        (never switched on for messages that are only being handed back)."""
        if self.membership is not None and not (busy and self._halting()):
            self.membership.protect(busy)

    def _halting(self) -> bool:
        return self.stopping.is_set() or self.departure.leaving.is_set()

    def _in_slot(self, message: dict[str, Any], runner: Runner) -> None:
        """A slot's thread: one message, start to end, on the slot's runner."""
        if self.autostop is not None:
            self.autostop.note_busy()
        try:
            with self.meter.occupied():
                self.handle(message, runner)
        finally:
            if self.autostop is not None:
                self.autostop.note_busy()  # the idle window starts when the task ends

    def idle(self) -> int | None:
        if self.rollout is not None and self.rollout.changed() is not None:
            return EXIT_NEW_BUNDLE  # systemd restarts us; ExecStartPre installs what the parameters now name
        if self._sweep.due():
            try:
                sweep_dlq(
                    self.store,
                    self.sqs,
                    self.config.dlq_url,
                    stale_after_ms=self.config.stale_after_ms,
                    hide_s=int(min(SQS_MAX_VISIBILITY_S, max(30, 2 * self.config.dlq_sweep_s))),
                    ended=self.meter.task_ended,
                )
            except Exception as err:
                logs.event(log, "dlq_sweep_error", logging.WARNING, error=f"{type(err).__name__}: {err}")
        if self.autostop is not None:
            self.autostop.maybe_stop()
        return None

    # -- one message ---------------------------------------------------------------------------------------------
    def handle(self, message: dict[str, Any], runner: Runner | None = None) -> None:
        """One message, start to end, on `runner` (a slot's; the first slot's by default)."""
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
                self._handle(parsed, message, runner or self.runner)
            except Exception:
                # The loop must survive anything. The message comes back after its visibility timeout; if we held
                # the task, its heartbeat has stopped, so the next receive may take it over.
                logs.event(log, "handle_error", logging.ERROR, exc=True)

    def _handle(self, parsed: TaskMessage, message: dict[str, Any], runner: Runner) -> None:
        held = self.claims.claim(parsed, message)
        if held is None:
            return
        logs.event(log, "claimed", attempt=held.attempts, receive_count=receive_count(message), type=held.type)
        try:
            task_type = self.registry.get(held.type)
            params = task_type.validate(held.params)
        except TaskTypeError as err:  # retrying cannot help: straight to the DLQ path
            self.finish(held, TaskStatus.FAILED, error=str(err))
            self.queue.to_dlq(message, str(err))
            return
        control = Control(self.stopping, self.departure.leaving)
        if control.reason() is not None:  # brought in by a long poll during a stop or a departure: back, unrun
            self.settle(held, message, Attempt(AttemptOutcome.INTERRUPTED, interrupted="stopping"), control)
            return
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
                result = runner.run(held.task_id, task_type, params, control)
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

    def finish(self, held: TaskRecord, status: TaskStatus, **changes: Any) -> TaskRecord:
        """The settle write (TaskStore.finish, one UpdateItem) with the instance's price, then the task's metrics."""
        record = self.store.finish(
            held, status, hourly_usd=self.config.gpu_hourly_usd, slots=self.config.slots, **changes
        )
        self.meter.task_ended(record)
        return record

    def settle(self, held: TaskRecord, message: dict[str, Any], result: Attempt, control: Control) -> None:
        """Record the attempt's outcome on the item (fenced by the held attempt), then decide the message's fate."""
        attempt, count = held.attempts, receive_count(message)
        if result.interrupted == "lost":
            logs.event(log, "attempt_lost", logging.WARNING, attempt=attempt)
            return  # another worker holds the task and its message now: touch neither
        try:
            if result.outcome is AttemptOutcome.SUCCEEDED:
                self.finish(held, TaskStatus.SUCCEEDED, result_uri=result.result_uri)
                self.queue.delete(message)
                logs.event(log, "succeeded", attempt=attempt, result_uri=result.result_uri)
            elif control.cancelled.is_set():
                self.finish(held, TaskStatus.CANCELLED, error=result.error)
                self.queue.delete(message)
                logs.event(log, "cancelled", attempt=attempt)
            elif result.interrupted == "stopping":
                self._hand_back_on_stop(held, message, f"{self._stop_cause()} during attempt {attempt}")
            elif self.config.retry.is_last(count):
                self.finish(held, TaskStatus.FAILED, error=result.error)
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
        """RUNNING -> QUEUED and make the message visible: at once (a hand-back) or after the retry delay."""
        item = self.store.requeue(held, error=error)
        if item.cancel_requested:  # a cancel landed during the attempt: honour it instead of retrying
            self.meter.task_ended(self.store.cancel(held.task_id))
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
            reason="handed back" if now else "retry",
            error=error,
        )

    def _stop_cause(self) -> str:
        return self.departure.reason if self.departure.leaving.is_set() else "the instance stopped"

    def _hand_back_on_stop(self, held: TaskRecord, message: dict[str, Any], error: str) -> None:
        """A stop (or a departure) is never the task's fault, so it must not use up one of the message's receives
        (maxReceiveCount counts failures): send a fresh message, make it the task's current one in the requeue, then
        delete the old. A crash between the steps leaves a stale copy (deleted unrun) or the old message (taken
        over): never two runs, never a lost task. If the send fails, the old message is handed back instead and its
        receive is used."""
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
            self.meter.task_ended(self.store.cancel(held.task_id))
            logs.event(log, "cancelled", attempt=held.attempts)
            return
        logs.event(log, "requeued", attempt=held.attempts, reason="handed back", error=error)
