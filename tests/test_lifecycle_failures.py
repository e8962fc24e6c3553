"""Cancels, stops and duplicates under failure: each case an adapter dying or a copy arriving at the worst moment.

Against the moto server with the synthesized stacks; workers are real adapter Workers, "dying" is a claim that is
never heartbeated again (its heartbeat goes stale), as after a SIGKILL.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests._adapter_support as support
from adapter.queue import sweep_dlq
from core.message import TaskMessage
from core.store import TaskStore
from core.tasks import TaskStatus
from localaws.lambdas import LocalController
from tests._adapter_support import REPO, queue_counts, store_for, submit, worker_env

module_aws, aws = support.module_aws, support.aws  # fixtures: one local AWS per module
LONG = {"seconds": 60, "exit_code": 0}  # would keep the test waiting a minute if it ever ran


@pytest.fixture
def store(aws: Any) -> TaskStore:
    return store_for(aws)


def messages(aws: Any) -> list[dict[str, Any]]:
    out = aws.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return list(out.get("Messages", []))


def test_an_accepted_cancel_survives_the_death_of_its_adapter(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """RUNNING + cancel_requested, its adapter SIGKILLed: the next claim ends it CANCELLED and never runs it.
    (Before: the claim removed cancel_requested and ran the task again to SUCCEEDED.)"""
    task_id = submit(aws, store, "sleep", LONG)
    store.claim(task_id, worker="dead", stale_after_ms=1, at_ms=1)  # claimed long ago, never heartbeated since
    assert store.cancel(task_id).cancel_requested is True  # the API answered 200 cancel_requested
    worker = make_worker()
    started = time.monotonic()
    worker.turn()
    item = store.get(task_id)
    assert item is not None and item.status == "CANCELLED" and item.attempts == 1  # no second attempt
    assert time.monotonic() - started < 30 and worker.runner.current_pgid is None
    assert messages(aws) == []  # its message is gone too


def test_a_requeued_task_with_a_cancel_requested_never_runs(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """The adapter handed the task back and died before honouring the cancel it found: QUEUED + cancel_requested."""
    task_id = submit(aws, store, "sleep", LONG)
    held = store.claim(task_id, worker="dying", stale_after_ms=60_000).held
    store.cancel(task_id)
    store.requeue(held, error="retry")
    make_worker().turn()
    item = store.get(task_id)
    assert item is not None and item.status == "CANCELLED" and item.attempts == 1


def test_a_duplicate_message_is_deleted_and_never_fails_the_task(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """A second copy with another enqueue identity (a racing or repeated send) is recognised and deleted unrun,
    and the DLQ sweep fails a task only for its current message."""
    sqs = aws.client("sqs")
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
    stale = TaskMessage(task_id, "0123456789abcdef").encode()
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody=stale)
    sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=stale)  # a copy that SQS gave up on
    assert sweep_dlq(store, sqs, aws.dlq_url, stale_after_ms=1000, hide_s=30) == 0
    worker = make_worker()
    worker.turn()
    worker.turn()
    item = store.get(task_id)
    assert item is not None and item.status == "SUCCEEDED" and item.attempts == 1
    assert messages(aws) == [] and sum(queue_counts(aws, aws.dlq_url)) == 1  # only the copy we put there


def test_racing_keyed_submits_send_exactly_one_message(aws: Any) -> None:
    """Concurrent repeats of one keyed submit: one task, one message (before: each racer whose replay found no
    `enqueued_at` yet sent its own copy)."""
    from orchestrator.app import create_app
    from orchestrator.server import serve_in_thread
    from orchestrator.settings import Clients, Settings

    settings = Settings.from_env({**aws.env(), "ORCHESTRATOR_INSECURE": "1"})
    table = aws.resource("dynamodb").Table(settings.table_name)
    body = {"type": "noop", "params": {}, "idempotency_key": "race-1"}
    with LocalController(aws) as controller:
        clients = Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table)
        with serve_in_thread(create_app(settings, clients)) as url:

            def post(_: int) -> int:
                return httpx.post(f"{url}/tasks", json=body, timeout=20).status_code

            with ThreadPoolExecutor(max_workers=6) as pool:
                codes = list(pool.map(post, range(12)))
    assert set(codes) <= {202, 503} and 202 in codes, codes  # 503 enqueue_in_progress: the CLI retries
    bodies = [json.loads(m["Body"]) for m in messages(aws)]
    assert len(bodies) == 1, bodies


def test_repeats_of_a_keyed_submit_whose_sender_died_send_one_message(aws: Any, store: TaskStore) -> None:
    """The first request wrote the task and died before sending (long ago: its lease has run out). Concurrent
    repeats: exactly one takes the right to send (a conditional write), the others send nothing. (Before: every
    repeat sent.)"""
    from orchestrator.app import create_app
    from orchestrator.server import serve_in_thread
    from orchestrator.settings import Clients, Settings

    body = {"type": "noop", "params": {}, "idempotency_key": "died-1"}
    task = store.create(task_type="noop", params={}, idempotency_key="died-1", at_ms=1)
    settings = Settings.from_env({**aws.env(), "ORCHESTRATOR_INSECURE": "1"})
    table = aws.resource("dynamodb").Table(settings.table_name)
    with LocalController(aws) as controller:
        clients = Clients(sqs=aws.client("sqs"), ec2=aws.client("ec2"), lambda_=controller.client, table=table)
        with serve_in_thread(create_app(settings, clients)) as url, ThreadPoolExecutor(max_workers=6) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{url}/tasks", json=body, timeout=20).status_code, range(6)))
    assert 202 in codes and set(codes) <= {202, 503}, codes
    bodies = [json.loads(m["Body"]) for m in messages(aws)]
    current = store.get(task.task_id)
    assert current is not None and [b["enqueue_id"] for b in bodies] == [current.enqueue_id]


def test_a_completed_attempt_is_settled_not_run_again(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """The adapter died between the job's exit (outputs uploaded, completion marker written) and the settle: the
    takeover settles SUCCEEDED with those results. (Before: the job ran a second time.)"""
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 3})  # would FAIL if it ran again
    held = store.claim(task_id, worker="dead", stale_after_ms=1, at_ms=1).held
    store.mark_completed(held, f"s3://{aws.bucket}/results/{task_id}/")
    make_worker().turn()
    item = store.get(task_id)
    assert item is not None and item.status == TaskStatus.SUCCEEDED
    assert item.result_uri == f"s3://{aws.bucket}/results/{task_id}/" and item.attempts == 2
    assert messages(aws) == []


def test_a_dead_workers_attempt_counts_and_says_so(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
    store.claim(task_id, worker="dead", stale_after_ms=1, at_ms=1)
    make_worker().turn()
    item = store.get(task_id)
    assert item is not None and item.status == "SUCCEEDED" and item.attempts == 2
    assert item.error is not None and "attempt 1 on dead stopped heartbeating" in item.error


def test_sigterm_while_starting_exits_cleanly(aws: Any, tmp_path: Path) -> None:
    """A stop during start-up (here: the first AWS call hangs) ends the adapter with 0, not killed by -15."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        silent.settimeout(20)
        env = worker_env(aws, tmp_path / "work", AWS_ENDPOINT_URL=f"http://127.0.0.1:{silent.getsockname()[1]}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapter"],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            conn, _ = silent.accept()  # the adapter is past its imports, in its first AWS call
            proc.terminate()
            out, _ = proc.communicate(timeout=20)
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0, out
    assert b"stopped_before_start" in out


@pytest.fixture
def make_worker(aws: Any, tmp_path: Path) -> Any:
    from adapter.__main__ import build

    def make(**overrides: str) -> Any:
        return build(worker_env(aws, tmp_path / "work", WORKER_ID="w-live", **overrides))

    return make
