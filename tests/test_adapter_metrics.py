"""The adapter's metrics (adapter/metrics.py) and the settle write's cost (core/store.py `finish`): the exact EMF lines
of a SUCCEEDED and a FAILED task shipped to a log group of the local AWS (moto on 127.0.0.1), the same lines on
stdout without one, the busy and idle slot-minutes on a clock the test moves, the GPU readings of a fake
`nvidia-smi` first on PATH, and the LogShipper keeping its lines across a failed send."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from adapter.metrics import Meter, gpu_readings
from core import metrics as m
from core.metrics import LogShipper
from core.store import TaskStore
from core.tasks import TaskRecord, TaskStatus
from tests._adapter_support import create_log_group, log_messages, record_calls, submit, worker_env

# fixtures: one local AWS per module and its task table
module_aws, aws, store = support.module_aws, support.aws, support.store

QUERY = "--query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits"


def directive(at_ms: int | None, namespace: str, dimensions: list[str], metrics: list[tuple[str, str]]) -> Any:
    """An EMF line's `_aws` member, spelled out as CloudWatch reads it."""
    return {
        "Timestamp": at_ms,
        "CloudWatchMetrics": [
            {
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics],
            }
        ],
    }


def task_lines(record: TaskRecord, namespace: str, worker: str, hourly_usd: float | None) -> list[dict[str, Any]]:
    """The two lines a settled task gets: TasksEnded by type and outcome, then the rest by type."""
    assert record.started_at is not None and record.finished_at is not None
    common = {"event": "metrics", "task_id": record.task_id, "worker": worker, "Type": record.type}
    ended = {
        "_aws": directive(record.finished_at, namespace, ["Outcome", "Type"], [("TasksEnded", "Count")]),
        **common,
        "Outcome": record.status.value,
        "TasksEnded": 1,
    }
    running_s = (record.finished_at - record.started_at) / 1000
    names = [("Attempts", "Count"), ("TimeQueued", "Seconds"), ("TimeRunning", "Seconds"), ("GpuSeconds", "Seconds")]
    values: dict[str, Any] = {
        "Attempts": record.attempts,
        "TimeQueued": (record.started_at - record.created_at) / 1000,
        "TimeRunning": running_s,
        "GpuSeconds": running_s,
    }
    if hourly_usd is not None:  # one slot: the task holds the whole instance
        names.append(("TaskCost", "None"))
        values["TaskCost"] = running_s * hourly_usd / 3600
    return [ended, {"_aws": directive(record.finished_at, namespace, ["Type"], names), **common, **values}]


def test_a_succeeded_and_a_failed_task_ship_their_exact_lines(aws: Any, store: TaskStore, tmp_path: Path) -> None:
    group = create_log_group(aws)
    env = worker_env(
        aws,
        tmp_path / "work",
        WORKER_ID="w-metrics",
        MAX_RECEIVES="1",  # the first failure is the last: FAILED at once
        GPU_SLOTS="1",
        GPU_HOURLY_USD="3.6",
        METRICS_NAMESPACE="GpuOrchestratorTest",
        METRICS_LOG_GROUP=group,
    )
    worker = build(env)
    good = submit(aws, store, "sleep", {"seconds": 0.2, "exit_code": 0})
    bad = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 3})
    shipper = worker.meter.write
    assert isinstance(shipper, LogShipper) and shipper.group == group and shipper.stream == "w-metrics"
    sent = record_calls(shipper.logs, "PutLogEvents")
    worker.turn()
    worker.turn()
    assert sent == []  # buffered: a short task makes no call to CloudWatch Logs
    records = [store.get(task_id) for task_id in (good, bad)]
    assert [r.status if r else None for r in records] == [TaskStatus.SUCCEEDED, TaskStatus.FAILED]
    for record in records:  # the settle write itself carries the GPU time and its cost
        assert record is not None and record.started_at is not None and record.finished_at is not None
        assert record.gpu_seconds == (record.finished_at - record.started_at) / 1000
        assert record.cost_usd == pytest.approx(record.gpu_seconds * 3.6 / 3600, rel=1e-12)
    worker.meter.close()  # what the loop's `finally:` does at exit
    assert len(sent) == 1
    shipped = [json.loads(line) for line in log_messages(aws, group, "w-metrics")]  # no instance id: the worker's
    expected = [line for r in records if r for line in task_lines(r, "GpuOrchestratorTest", "w-metrics", 3.6)]
    assert [doc for doc in shipped if doc["task_id"] is not None] == expected
    (host,) = [doc for doc in shipped if doc["task_id"] is None]  # the last interval's line, at exit
    assert host["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "GpuBusyMinutes", "Unit": "Count"},
        {"Name": "GpuIdleMinutes", "Unit": "Count"},
    ]
    assert host["GpuBusyMinutes"] > 0 and host["GpuIdleMinutes"] >= 0


def test_without_a_log_group_the_lines_go_to_stdout(
    aws: Any, store: TaskStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = build(worker_env(aws, tmp_path / "work", WORKER_ID="w-stdout", GPU_SLOTS="1"))
    task_id = submit(aws, store, "noop", {})
    capsys.readouterr()
    worker.turn()
    record = store.get(task_id)
    assert record is not None and record.status is TaskStatus.SUCCEEDED and record.cost_usd is None
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"event":"metrics"' in line]
    assert printed == task_lines(record, "GpuOrchestrator", "w-stdout", None)


def test_busy_and_idle_slot_minutes_on_an_injected_clock() -> None:
    now, lines = [1000.0], list[str]()
    meter = Meter(
        namespace="Ns",
        slots=2,
        worker="w",
        write=lines.append,
        clock=lambda: now[0],
        wall_ms=lambda: int(now[0] * 1000),
        gpus=dict,
    )

    def at(t: float) -> None:
        now[0] = 1000.0 + t

    at(10)
    with meter.occupied():  # one slot busy from 10 s to 40 s: 30 of the first minute's 120 slot-seconds
        at(40)
    at(59.9)
    meter.tick()
    assert lines == []  # not a minute yet
    at(60)
    meter.tick()
    at(70)
    with meter.occupied():  # both slots busy from 70 s; one until 100 s, the other past the next minute
        with meter.occupied():
            at(100)
        at(120)
        meter.tick()
    docs = [json.loads(line) for line in lines]
    host = directive(None, "Ns", [], [("GpuBusyMinutes", "Count"), ("GpuIdleMinutes", "Count")])
    common = {"event": "metrics", "task_id": None, "worker": "w"}
    assert docs == [
        {"_aws": {**host, "Timestamp": 1_060_000}, **common, "GpuBusyMinutes": 0.5, "GpuIdleMinutes": 1.5},
        # 30 s + 50 s of the 120 slot-seconds from 60 s to 120 s
        {
            "_aws": {**host, "Timestamp": 1_120_000},
            **common,
            "GpuBusyMinutes": round(80 / 60, 4),
            "GpuIdleMinutes": round(40 / 60, 4),
        },
    ]


def fake_nvidia_smi(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def test_gpu_readings_from_a_fake_nvidia_smi_first_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bins = tmp_path / "bin"
    # Answers only the query the adapter is meant to make, as the real tool prints it: one line per GPU.
    fake_nvidia_smi(bins, f'[ "$*" = "{QUERY}" ] || exit 9\nprintf "37, 1024\\n53, 3072\\n[N/A], [N/A]\\n"\n')
    monkeypatch.setenv("PATH", f"{bins}:/usr/bin:/bin")
    assert gpu_readings() == {m.GPU_UTILIZATION: 45.0, m.GPU_MEMORY_USED: 4096.0}
    lines: list[str] = []
    Meter(namespace="Ns", slots=2, worker="w", write=lines.append).report()
    (doc,) = map(json.loads, lines)
    assert [x["Name"] for x in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == [
        "GpuBusyMinutes",
        "GpuIdleMinutes",
        "GpuUtilization",
        "GpuMemoryUsed",
    ]
    assert (doc["GpuUtilization"], doc["GpuMemoryUsed"]) == (45.0, 4096.0)


@pytest.mark.parametrize(
    "script",
    ["exit 6\n", 'echo "NVIDIA-SMI has failed"\n', "exec sleep 10\n"],
    ids=["fails", "no-numbers", "hangs"],
)
def test_a_failing_nvidia_smi_leaves_the_gpu_metrics_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    fake_nvidia_smi(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    started = time.monotonic()
    assert gpu_readings(timeout_s=0.5) == {}
    assert time.monotonic() - started < 5  # a hung tool is cut off at the timeout


def test_no_nvidia_smi_on_path_leaves_the_gpu_metrics_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    lines: list[str] = []
    Meter(namespace="Ns", slots=1, worker="w", write=lines.append).report()
    (doc,) = map(json.loads, lines)
    assert "GpuUtilization" not in doc and "GpuMemoryUsed" not in doc


def test_the_shipper_keeps_its_lines_across_a_failed_send(aws: Any) -> None:
    group = f"/gpu-orchestrator/test/late-{time.time_ns()}"  # created only after the first send failed
    shipper = LogShipper(aws.client("logs"), group=group, stream="i-0123456789abcdef0")
    now = [0.0]
    meter = Meter(namespace="Ns", slots=1, worker="w", write=shipper, flush=shipper.flush, clock=lambda: now[0])
    meter.tick()  # not yet a minute: nothing is sent
    now[0] = 60.0
    meter.tick()  # the group does not exist: the send fails, the line stays
    now[0] = 120.0
    aws.client("logs").create_log_group(logGroupName=group)
    meter.close()  # both lines go out, oldest first
    docs = [json.loads(line) for line in log_messages(aws, group, "i-0123456789abcdef0")]
    assert [(d["GpuBusyMinutes"], d["GpuIdleMinutes"]) for d in docs] == [(0.0, 1.0), (0.0, 1.0)]
    assert shipper.flush() == 0  # nothing left behind


def test_finish_records_the_settled_attempts_gpu_time_and_cost_in_one_write(aws: Any, store: TaskStore) -> None:
    task = store.create(task_type="noop", params={})
    first = store.claim(task.task_id, worker="w", stale_after_ms=300_000, at_ms=task.created_at + 1_000).held
    store.requeue(first, error="handed back")  # this attempt's time is not the task's GPU time
    second = store.claim(task.task_id, worker="w", stale_after_ms=300_000, at_ms=task.created_at + 50_000).held
    writes = record_calls(store.table.meta.client, "UpdateItem")
    done = store.finish(second, TaskStatus.SUCCEEDED, at_ms=task.created_at + 140_500, hourly_usd=4.0, slots=4)
    assert len(writes) == 1  # the settle write, nothing more
    assert done.gpu_seconds == 90.5 and done.cost_usd == pytest.approx(90.5 * 4.0 / 3600 / 4, rel=1e-12)
    assert store.get(task.task_id) == done
    unpriced = store.create(task_type="noop", params={})
    held = store.claim(unpriced.task_id, worker="w", stale_after_ms=300_000, at_ms=unpriced.created_at).held
    store.finish(held, TaskStatus.FAILED, error="x", at_ms=unpriced.created_at + 2_000)
    item = store.get(unpriced.task_id)
    assert item is not None and item.gpu_seconds == 2 and item.cost_usd is None
