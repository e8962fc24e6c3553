"""The adapter's loop in-process against the moto server: one `turn()` is one receive -> claim -> run -> settle."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.__main__ import build
from adapter.autostop import AutoStop
from adapter.queue import sweep_dlq
from adapter.rollout import EXIT_NEW_BUNDLE
from adapter.worker import Worker
from core.message import TaskMessage
from core.store import TaskStore
from tests._adapter_support import (
    alive,
    inference_server,
    queue_counts,
    registry_with,
    set_visibility,
    submit,
    wait_for,
    worker_env,
)

# fixtures: one local AWS per module and its task table
module_aws, aws, store = support.module_aws, support.aws, support.store


@pytest.fixture
def make_worker(aws: Any, tmp_path: Path) -> Any:
    def make(**env: str) -> Worker:
        return build(worker_env(aws, tmp_path / "work", WORKER_ID=env.pop("WORKER_ID", "w-test"), **env))

    return make


def s3_text(aws: Any, key: str) -> str:
    return str(aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read().decode())


def test_submit_run_results_in_s3(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "matmul", {"size": 6, "repeat": 2})
    assert make_worker().turn() is None
    item = store.get(task_id)
    assert item is not None
    assert item.status == "SUCCEEDED" and item.attempts == 1 and item.worker == "w-test"
    assert item.result_uri == f"s3://{aws.bucket}/results/{task_id}/"
    result = json.loads(s3_text(aws, f"results/{task_id}/result.json"))
    assert result["device"] == "cpu:python" and result["size"] == 6 and result["elapsed_s"] >= 0
    assert json.loads(s3_text(aws, f"results/{task_id}/stdout.txt")) == result  # stdout kept too
    assert queue_counts(aws, aws.queue_url) == (0, 0)  # message deleted


def test_s3_input_is_downloaded_and_passed_as_a_path(aws: Any, store: TaskStore, make_worker: Any) -> None:
    aws.client("s3").put_object(Bucket=aws.bucket, Key="inputs/docs/a.txt", Body=b"one\ntwo\n")
    task_id = submit(aws, store, "digest", {"input": "inputs/docs/a.txt"})
    make_worker().turn()
    assert store.get(task_id).status == "SUCCEEDED"  # type: ignore[index]
    result = json.loads(s3_text(aws, f"results/{task_id}/result.json"))
    assert result == {"sha256": hashlib.sha256(b"one\ntwo\n").hexdigest(), "bytes": 8, "lines": 2}


def test_http_task_posts_to_the_local_server(aws: Any, store: TaskStore, make_worker: Any, tmp_path: Path) -> None:
    with inference_server() as server:
        types = registry_with(
            tmp_path / "types.json",
            {
                "infer_test": {
                    "kind": "http",
                    "description": "test",
                    "url": server["url"],
                    "timeout_s": 10,
                    "params": {"prompt": {"type": "string", "required": True}},
                }
            },
        )
        task_id = submit(aws, store, "infer_test", {"prompt": "hi"})
        make_worker(TASK_TYPES_FILE=str(types)).turn()
    assert server["requests"] == [{"task_id": task_id, "params": {"prompt": "hi"}}]
    assert store.get(task_id).status == "SUCCEEDED"  # type: ignore[index]
    assert json.loads(s3_text(aws, f"results/{task_id}/result.json")) == {"echo": {"prompt": "hi"}, "tokens": 3}


def test_cancel_queued_never_runs(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
    store.cancel(task_id)
    make_worker().turn()
    item = store.get(task_id)
    assert item.status == "CANCELLED" and item.attempts == 0  # type: ignore[index]
    assert queue_counts(aws, aws.queue_url) == (0, 0)


def test_cancel_running_stops_the_process(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 60, "exit_code": 0})
    worker = make_worker()
    turn = threading.Thread(target=worker.turn)
    turn.start()
    try:
        wait_for("the task to run", lambda: worker.runner.current_pgid)
        job = worker.runner.current_pgid
        store.cancel(task_id)  # RUNNING: sets cancel_requested; the heartbeat sees it
    finally:
        turn.join(timeout=20)
    assert not turn.is_alive()
    item = store.get(task_id)
    assert item.status == "CANCELLED" and item.attempts == 1  # type: ignore[index]
    assert job is not None and not alive(job)
    assert queue_counts(aws, aws.queue_url) == (0, 0)


def test_duplicate_delivery_runs_once(aws: Any, store: TaskStore, make_worker: Any, tmp_path: Path) -> None:
    with inference_server() as server:
        types = registry_with(
            tmp_path / "types.json",
            {
                "count": {
                    "kind": "http",
                    "description": "counts runs",
                    "url": server["url"],
                    "timeout_s": 10,
                    "params": {},
                }
            },
        )
        task_id = submit(aws, store, "count", {})
        aws.client("sqs").send_message(
            QueueUrl=aws.queue_url,  # SQS delivered it twice
            MessageBody=json.dumps({"task_id": task_id, "type": "count"}),
        )
        worker = make_worker(TASK_TYPES_FILE=str(types))
        worker.turn()
        worker.turn()
    assert len(server["requests"]) == 1
    item = store.get(task_id)
    assert item.status == "SUCCEEDED" and item.attempts == 1  # type: ignore[index]
    assert queue_counts(aws, aws.queue_url) == (0, 0)  # the duplicate was deleted unrun


def test_duplicate_while_running_is_left_to_the_holder(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 60, "exit_code": 0})
    holder = make_worker(WORKER_ID="holder")
    turn = threading.Thread(target=holder.turn)
    turn.start()
    try:
        wait_for("the holder to run it", lambda: holder.runner.current_pgid)
        aws.client("sqs").send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps({"task_id": task_id, "type": "sleep"})
        )
        other = make_worker(WORKER_ID="other", CLAIM_GRACE_SECONDS="0")
        other.turn()  # heartbeat fresh: not taken over, not deleted, hidden until it could be stale
        item = store.get(task_id)
        assert item.worker == "holder" and item.attempts == 1  # type: ignore[index]
        assert queue_counts(aws, aws.queue_url) == (0, 2)
    finally:
        store.cancel(task_id)
        turn.join(timeout=20)
    assert store.get(task_id).status == "CANCELLED"  # type: ignore[index]


def test_stale_running_task_is_taken_over(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
    store.claim(task_id, worker="dead", stale_after_ms=1, at_ms=1)  # claimed long ago, never heartbeated since
    make_worker().turn()
    item = store.get(task_id)
    assert item.status == "SUCCEEDED" and item.attempts == 2 and item.worker == "w-test"  # type: ignore


def test_poison_messages_go_to_the_dlq_and_the_loop_survives(aws: Any, store: TaskStore, make_worker: Any) -> None:
    sqs = aws.client("sqs")
    unknown_type = store.create(task_type="no_such_type", params={}).task_id
    bad_params = store.create(task_type="sleep", params={"seconds": "soon", "exit_code": 0}).task_id
    bodies = [
        "{not json",
        json.dumps({"hello": 1}),
        json.dumps({"task_id": "01NOSUCHTASK0000000000000"}),
        json.dumps({"task_id": unknown_type}),
        json.dumps({"task_id": bad_params}),
    ]
    for body in bodies:
        sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    worker = make_worker()
    for _ in bodies:
        assert worker.turn() is None
    assert queue_counts(aws, aws.queue_url) == (0, 0)
    moved = sqs.receive_message(QueueUrl=aws.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    reasons = {m["Body"]: m["MessageAttributes"]["reason"]["StringValue"] for m in moved["Messages"]}
    assert reasons[bodies[0]] == "body is not valid JSON"
    assert reasons[bodies[1]] == "body names no task_id"
    assert reasons[bodies[2]] == "names no known task"
    assert "unknown task type" in reasons[bodies[3]] and "seconds: expected number" in reasons[bodies[4]]
    for task_id in (unknown_type, bad_params):
        item = store.get(task_id)
        assert item.status == "FAILED" and item.error == reasons[json.dumps({"task_id": task_id})]  # type: ignore


def test_retries_then_dlq_with_the_last_error(aws: Any, store: TaskStore, make_worker: Any) -> None:
    task_id = submit(aws, store, "sleep", {"seconds": 0, "exit_code": 3})
    worker = make_worker()
    for receive in (1, 2):
        worker.turn()
        item = store.get(task_id)
        assert item.status == "QUEUED" and item.attempts == receive  # type: ignore[index]
        assert item.error.startswith("exit code 3")  # type: ignore[index]
    worker.turn()
    item = store.get(task_id)
    assert item.status == "FAILED" and item.attempts == 3  # type: ignore[index]
    assert item.error == "exit code 3: exiting with 3 as asked"  # type: ignore[index]
    assert queue_counts(aws, aws.queue_url) == (0, 0)
    assert queue_counts(aws, aws.dlq_url) == (1, 0)


def test_dlq_sweep_fails_a_task_whose_holder_died_on_its_last_attempt(
    aws: Any, store: TaskStore, make_worker: Any
) -> None:
    task_id = store.create(task_type="sleep", params={"seconds": 0, "exit_code": 0}).task_id
    store.claim(task_id, worker="dead", stale_after_ms=1, at_ms=1)
    aws.client("sqs").send_message(QueueUrl=aws.dlq_url, MessageBody=json.dumps({"task_id": task_id}))
    worker = make_worker(DLQ_SWEEP_SECONDS="0")
    assert worker.idle() is None
    item = store.get(task_id)
    assert item.status == "FAILED" and "moved to the DLQ" in item.error  # type: ignore[index]


def test_rollout_exits_with_its_code_when_a_parameter_changes(aws: Any, make_worker: Any) -> None:
    ssm = aws.client("ssm")
    prefix = f"/gpu-orchestrator/test-{aws.queue_url.rsplit('-', 1)[-1]}/adapter"
    ssm.put_parameter(Name=f"{prefix}/bundle", Value="s3://b/adapter/adapter-aaaa.zip", Type="String")
    ssm.put_parameter(Name=f"{prefix}/config", Value=json.dumps({"TASK_QUEUE_URL": aws.queue_url}), Type="String")
    rollout = {
        "ADAPTER_BUNDLE_PARAM": f"{prefix}/bundle",
        "ADAPTER_BUNDLE_URI": "s3://b/adapter/adapter-aaaa.zip",
        "ADAPTER_CONFIG_PARAM": f"{prefix}/config",
        "ROLLOUT_CHECK_SECONDS": "0",
    }
    worker = make_worker(**rollout)
    assert worker.idle() is None  # both parameters name what runs
    ssm.put_parameter(
        Name=f"{prefix}/config", Value=json.dumps({"TASK_QUEUE_URL": "elsewhere"}), Type="String", Overwrite=True
    )
    assert worker.idle() == EXIT_NEW_BUNDLE  # config moved
    ssm.put_parameter(
        Name=f"{prefix}/config", Value=json.dumps({"TASK_QUEUE_URL": aws.queue_url}), Type="String", Overwrite=True
    )
    assert make_worker(**rollout).idle() is None
    ssm.put_parameter(Name=f"{prefix}/bundle", Value="s3://b/adapter/adapter-bbbb.zip", Type="String", Overwrite=True)
    assert make_worker(**rollout).idle() == EXIT_NEW_BUNDLE  # bundle moved


def test_autostop_is_told_about_tasks_and_asked_when_idle(aws: Any, store: TaskStore, make_worker: Any) -> None:
    now = [1000.0]
    powered_off: list[float] = []
    autostop = AutoStop(60, checks=lambda: None, poweroff=lambda: powered_off.append(now[0]), clock=lambda: now[0])
    worker = make_worker()
    worker.autostop = autostop
    submit(aws, store, "sleep", {"seconds": 0, "exit_code": 0})
    now[0] = 1050.0
    worker.turn()  # a task: the idle window restarts when it ends
    assert autostop.idle_for() == 0 and powered_off == []
    now[0] = 1100.0
    worker.turn()  # idle 50 s < 60 s
    assert powered_off == []
    now[0] = 1111.0
    worker.turn()  # idle 61 s, nothing queued or running: power off
    assert powered_off == [1111.0]


def test_sigterm_during_a_task_hands_it_back(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """In-process half of the stop path (the subprocess test sends a real signal): request_stop mid-task."""
    set_visibility(aws, 300)
    task_id = submit(aws, store, "sleep", {"seconds": 60, "exit_code": 0})
    worker = make_worker()
    turn = threading.Thread(target=worker.turn)
    turn.start()
    try:
        wait_for("the task to run", lambda: worker.runner.current_pgid)
        job = worker.runner.current_pgid
        worker.request_stop()
    finally:
        turn.join(timeout=20)
    item = store.get(task_id)
    assert item.status == "QUEUED" and item.attempts == 1 and item.worker is None  # type: ignore
    assert job is not None and not alive(job)
    assert queue_counts(aws, aws.queue_url) == (1, 0)  # visible at once, not in 300 s
    assert worker.run() == 0  # the loop does not start another turn once stopping


def test_stops_never_use_up_retries(aws: Any, store: TaskStore, make_worker: Any) -> None:
    """The instance stopping more often than maxReceiveCount leaves the task QUEUED with a fresh message each time:
    a stop is never the task's fault. (Before: the third stop made it FAILED.)"""
    sqs = aws.client("sqs")
    task_id = submit(aws, store, "sleep", {"seconds": 60, "exit_code": 0})
    for stop in range(1, aws.max_receive_count + 2):
        worker = make_worker()
        turn = threading.Thread(target=worker.turn)
        turn.start()
        try:
            wait_for(f"attempt {stop} to run", lambda: worker.runner.current_pgid)  # noqa: B023
            worker.request_stop()
        finally:
            turn.join(timeout=20)
        item = store.get(task_id)
        assert item is not None and item.status == "QUEUED" and item.attempts == stop
        assert f"instance stopped during attempt {stop}" in str(item.error)
    (message,) = sqs.receive_message(
        QueueUrl=aws.queue_url, WaitTimeSeconds=1, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"  # the current message is a fresh one
    assert TaskMessage.parse(message["Body"]).enqueue_id == store.get(task_id).enqueue_id  # type: ignore[union-attr]
    assert queue_counts(aws, aws.dlq_url)[0] == 0
    assert sweep_dlq(store, sqs, aws.dlq_url, stale_after_ms=1000, hide_s=30) == 0


def test_only_the_systemd_unit_opts_in_to_powering_the_host_off(aws: Any, tmp_path: Path) -> None:
    env = worker_env(aws, tmp_path / "work", WORKER_ID="w-poweroff", IDLE_WINDOW_SECONDS="60")
    assert build(env).autostop is None  # a laptop or CI runner: never `systemctl poweroff`
    assert isinstance(build({**env, "ADAPTER_POWEROFF": "1"}).autostop, AutoStop)
    assert build({**env, "ADAPTER_POWEROFF": "1", "IDLE_WINDOW_SECONDS": "0"}).autostop is None
    unit = (Path(__file__).parent.parent / "adapter" / "deploy" / "gpu-adapter.service").read_text()
    assert "Environment=ADAPTER_POWEROFF=1" in unit
