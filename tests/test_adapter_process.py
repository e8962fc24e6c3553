"""`python -m adapter` as a real subprocess, killed and stopped with real signals, against the moto server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tests._adapter_support as support
from core.store import TaskStore
from tests._adapter_support import (
    REPO,
    alive,
    children_of,
    queue_counts,
    registry_with,
    set_visibility,
    store_for,
    submit,
    wait_for,
    worker_env,
)

module_aws, aws = support.module_aws, support.aws  # fixtures: one local AWS per module


@contextmanager
def adapter_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapter"],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is one JSON object...
    assert all("task_id" in doc for doc in docs)  # ...with task_id on it
    return docs


def running_job(store: TaskStore, task_id: str, proc: subprocess.Popen[bytes]) -> list[int]:
    """Wait until the adapter runs the task; return the job's pid (the adapter's child)."""
    wait_for("RUNNING", lambda: getattr(store.get(task_id), "status", None) == "RUNNING")
    return list(wait_for("the job process", lambda: children_of(proc.pid)))


def test_sigkill_mid_task_loses_nothing(aws: Any, tmp_path: Path) -> None:
    set_visibility(aws, 2)  # the killed worker's message comes back within seconds
    store = store_for(aws)
    task_id = submit(aws, store, "sleep", {"seconds": 2, "exit_code": 0})
    log = tmp_path / "adapter.log"
    with adapter_process(worker_env(aws, tmp_path / "a", WORKER_ID="first"), log) as first:
        jobs = running_job(store, task_id, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    wait_for("the orphaned job to die with its adapter", lambda: not any(alive(j) for j in jobs), timeout=10)
    assert store.get(task_id).status == "RUNNING"  # type: ignore[index]  # nobody settled it
    with adapter_process(worker_env(aws, tmp_path / "b", WORKER_ID="second"), log) as second:
        wait_for("SUCCEEDED", lambda: store.get(task_id).status == "SUCCEEDED", timeout=30)  # type: ignore
        wait_for("the message deleted", lambda: queue_counts(aws, aws.queue_url) == (0, 0))
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    item = store.get(task_id)
    assert item.attempts == 2 and item.worker == "second"  # type: ignore[index]  # taken over once
    assert queue_counts(aws, aws.dlq_url) == (0, 0)
    events = [(d["worker"], d["event"]) for d in log_lines(log) if d["task_id"] == task_id]
    assert ("second", "claimed") in events and events.count(("second", "succeeded")) == 1
    assert ("first", "succeeded") not in events


def test_sigterm_requeues_the_running_task_at_once(aws: Any, tmp_path: Path) -> None:
    store = store_for(aws)  # the queue keeps its 300 s visibility: only an explicit release shows it again
    task_id = submit(aws, store, "sleep", {"seconds": 60, "exit_code": 0})
    log = tmp_path / "adapter.log"
    with adapter_process(worker_env(aws, tmp_path / "w"), log) as proc:
        jobs = running_job(store, task_id, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not any(alive(j) for j in jobs)
    item = store.get(task_id)
    assert item is not None
    assert item.status == "QUEUED" and item.attempts == 1 and item.worker is None
    again = aws.client("sqs").receive_message(QueueUrl=aws.queue_url, WaitTimeSeconds=0)
    assert [json.loads(m["Body"])["task_id"] for m in again.get("Messages", [])] == [task_id]
    events = [d["event"] for d in log_lines(log)]
    assert "requeued" in events and events[-1] == "exit"


def test_second_sigterm_exits_now(aws: Any, tmp_path: Path) -> None:
    store = store_for(aws)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    types = registry_with(
        tmp_path / "types.json",
        {
            "stubborn": {
                "kind": "command",
                "description": "ignores SIGTERM",
                "params": {},
                "timeout_s": 120,
                "argv": ["{python}", "-c", stubborn],
            }
        },
    )
    task_id = submit(aws, store, "stubborn", {})
    env = worker_env(aws, tmp_path / "w", TASK_TYPES_FILE=str(types), STOP_GRACE_SECONDS="60")
    log = tmp_path / "adapter.log"
    with adapter_process(env, log) as proc:
        jobs = running_job(store, task_id, proc)
        proc.send_signal(signal.SIGTERM)  # the job ignores it; the adapter would wait STOP_GRACE_SECONDS for it
        wait_for("the stop to begin", lambda: "stopping" in log.read_text() or proc.poll() is not None, timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    wait_for("the job killed with the adapter", lambda: not any(alive(j) for j in jobs), timeout=10)
    assert log_lines(log)[-1]["event"] == "second_signal_exit_now"
