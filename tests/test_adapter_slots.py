"""Slots: one task per GPU. A worker with GPU_SLOTS=2 against the moto server runs two tasks at once, each pinned to
its own GPU, asks SQS for no more messages than it has free slots, cancels one slot's task without touching the
other, and hands both back on SIGTERM. Jobs are gate jobs (tests/_adapter_support.py): they run until the test
opens their gate, so "at the same time" is shown by order (both arrived before the gate opened), never by a clock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from adapter.config import from_env
from adapter.slots import gpu_count
from core import contract as c
from core.message import TaskMessage
from core.store import TaskStore
from localaws.server import background
from tests._adapter_support import (
    Gate,
    alive,
    queue_counts,
    running,
    submit,
    wait_for,
    worker_env,
)

# fixtures: one local AWS per module, its task table, a registry with the gate type
module_aws, aws, store, types = support.module_aws, support.aws, support.store, support.gate_types


def status(store: TaskStore, task_id: str) -> str | None:
    item = store.get(task_id)
    return item.status.value if item is not None else None


def result(aws: Any, task_id: str) -> dict[str, Any]:
    body = aws.client("s3").get_object(Bucket=aws.bucket, Key=f"results/{task_id}/result.json")["Body"].read()
    return dict(json.loads(body))


def test_two_slots_run_two_tasks_at_once_each_on_its_own_gpu(
    aws: Any, store: TaskStore, types: Path, tmp_path: Path
) -> None:
    gate = Gate.at(tmp_path / "gate")
    worker = build(worker_env(aws, tmp_path / "work", WORKER_ID="w-slots", GPU_SLOTS="2", TASK_TYPES_FILE=str(types)))
    asked: list[tuple[int, int]] = []  # (MaxNumberOfMessages, free slots) of each receive on the task queue

    def note(params: dict[str, Any], **_: Any) -> None:
        if params["QueueUrl"] == aws.queue_url:
            asked.append((params["MaxNumberOfMessages"], worker.slots.free()))

    worker.sqs.meta.events.register("provide-client-params.sqs.ReceiveMessage", note)
    tasks = [submit(aws, store, "gate", gate.params()) for _ in range(2)]
    with running(worker):
        wait_for("both jobs to arrive", lambda: gate.arrived() == set(tasks))
        assert [status(store, t) for t in tasks] == ["RUNNING", "RUNNING"]  # both held at once, gate still shut
        assert worker.slots.busy() == 2 and len(worker.job_pgids()) == 2
        gate.open()
        wait_for("both to succeed", lambda: [status(store, t) for t in tasks] == ["SUCCEEDED", "SUCCEEDED"])
    seen = [result(aws, t) for t in tasks]
    assert sorted(r["CUDA_VISIBLE_DEVICES"] for r in seen) == ["0", "1"]
    assert all(r["NVIDIA_VISIBLE_DEVICES"] == r["CUDA_VISIBLE_DEVICES"] for r in seen)
    assert all(r["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for r in seen)  # index i is nvidia-smi's GPU i
    assert asked and all(free >= 1 and most == min(free, 10) for most, free in asked), asked
    assert asked[0] == (2, 2)  # the first receive, both slots free, asked for two
    assert queue_counts(aws, aws.queue_url) == (0, 0)


def test_one_slot_jobs_see_the_gpus_the_adapter_sees(aws: Any, store: TaskStore, types: Path, tmp_path: Path) -> None:
    gate = Gate.at(tmp_path / "gate")
    gate.open()
    worker = build(worker_env(aws, tmp_path / "work", WORKER_ID="w-one", GPU_SLOTS="1", TASK_TYPES_FILE=str(types)))
    task_id = submit(aws, store, "gate", gate.params())
    assert worker.turn() is None  # one message, to its end, in one turn: as before slots
    assert status(store, task_id) == "SUCCEEDED"
    got = result(aws, task_id)
    assert got["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")  # untouched
    assert got["NVIDIA_VISIBLE_DEVICES"] == os.environ.get("NVIDIA_VISIBLE_DEVICES")
    assert [p.name for p in (tmp_path / "work").iterdir()] == [f"runner-{os.getpid()}"]


def test_cancel_of_one_slot_leaves_the_other_running(aws: Any, store: TaskStore, types: Path, tmp_path: Path) -> None:
    gate = Gate.at(tmp_path / "gate")
    worker = build(worker_env(aws, tmp_path / "work", WORKER_ID="w-cancel", GPU_SLOTS="2", TASK_TYPES_FILE=str(types)))
    cancelled, kept = (submit(aws, store, "gate", gate.params()) for _ in range(2))
    with running(worker):
        wait_for("both jobs to arrive", lambda: gate.arrived() == {cancelled, kept})
        jobs = set(worker.job_pgids())
        store.cancel(cancelled)
        wait_for("the cancel", lambda: status(store, cancelled) == "CANCELLED")
        (left,) = worker.job_pgids()
        assert left in jobs and all(alive(j) == (j == left) for j in jobs)  # only the cancelled job was stopped
        before = store.get(kept).heartbeat_at  # type: ignore[union-attr]
        wait_for("the other slot to keep heartbeating", lambda: store.get(kept).heartbeat_at > before)  # type: ignore
        assert status(store, kept) == "RUNNING"
        gate.open()
        wait_for("the other to succeed", lambda: status(store, kept) == "SUCCEEDED")
    item = store.get(kept)
    assert item is not None and item.attempts == 1 and item.worker == "w-cancel"


def test_sigterm_hands_back_every_slot(aws: Any, store: TaskStore, types: Path, tmp_path: Path) -> None:
    """`python -m adapter` with two slots, both busy, gets a real SIGTERM: both tasks go back to QUEUED with fresh
    messages (visible at once, no receive used) and it exits 0."""
    gate = Gate.at(tmp_path / "gate")
    env = worker_env(aws, tmp_path / "work", GPU_SLOTS="2", TASK_TYPES_FILE=str(types), PYTHONPATH=str(support.REPO))
    tasks = {submit(aws, store, "gate", gate.params()) for _ in range(2)}
    with background([sys.executable, "-m", "adapter"], env=env, log_path=tmp_path / "adapter.log") as proc:
        wait_for("both jobs to arrive", lambda: gate.arrived() == tasks)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for task_id in tasks:
        item = store.get(task_id)
        assert item is not None and item.status == "QUEUED" and item.attempts == 1 and item.worker is None
        assert item.error == "the instance stopped during attempt 1"
    back = aws.client("sqs").receive_message(
        QueueUrl=aws.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert {TaskMessage.parse(m["Body"]).task_id for m in back} == tasks
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in back)  # fresh messages: none used up
    for task_id in tasks:
        store.cancel(task_id)  # QUEUED -> CANCELLED: nothing left for the module's later tests


def test_the_slot_count_comes_from_the_setting_else_the_gpus(aws: Any, tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A10G (UUID: GPU-a)'\necho 'GPU 1: NVIDIA A10G (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    failing = tmp_path / "failing-smi"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    failing.chmod(0o755)
    assert gpu_count([str(smi), "-L"]) == 2
    assert gpu_count([str(failing), "-L"]) == 1
    assert gpu_count([str(tmp_path / "absent"), "-L"]) == 1  # a CPU-only host: one slot
    env = worker_env(aws, tmp_path / "work")
    assert from_env(env, queue_visibility_s=300, queue_max_receives=3, detect_gpus=lambda: 4).slots == 4
    env["GPU_SLOTS"] = "2"
    assert from_env(env, queue_visibility_s=300, queue_max_receives=3, detect_gpus=lambda: 4).slots == 2
    env["GPU_SLOTS"] = "0"
    with pytest.raises(c.SettingError) as bad:
        from_env(env, queue_visibility_s=300, queue_max_receives=3)
    assert str(bad.value) == "GPU_SLOTS: 0 is not valid: at least 1 (one task per GPU)"
