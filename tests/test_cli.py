"""`python -m orchestrator ...` run as a real process against the service under uvicorn on 127.0.0.1.
The task's progress is driven through adapter.model.TaskStore, the same transitions the adapter makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.store import TaskStore
from core.tasks import TaskStatus
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings

TOKEN = "cli-test-token-abcdef"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def service(local_aws: Any, controller: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Starts the service; yields the environment the CLI needs (and a config file path of its own, so whatever
    `gpuq configure` wrote for the user running the tests plays no part)."""
    settings = Settings.from_env({**local_aws.env(), "ORCHESTRATOR_TOKEN": TOKEN})
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    clients = Clients(sqs=local_aws.client("sqs"), ec2=local_aws.client("ec2"), lambda_=controller.client, table=table)
    app = create_app(settings, clients)
    with serve_in_thread(app) as url:
        yield cli_env(url, tmp_path)


def cli_env(url: str, tmp_path: Path, token: str = TOKEN) -> dict[str, str]:
    """What the CLI process gets: the service's URL and token, and a config file of its own."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "ORCHESTRATOR_URL": url,
        "ORCHESTRATOR_TOKEN": token,
        "GPUQ_CONFIG": str(tmp_path / "gpuq.toml"),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def store(aws: Any) -> TaskStore:
    return TaskStore(aws.resource("dynamodb").Table(aws.table_name))


def test_submit_status_and_json_output(service: dict[str, str]) -> None:
    sub = cli(service, "submit", "matmul", "-p", "size=64", "-p", "repeat=2", "--json")
    assert sub.returncode == 0, sub.stderr
    task = json.loads(sub.stdout)
    assert task["status"] == "QUEUED" and task["params"] == {"size": 64, "repeat": 2}
    assert task["idempotency_key"]  # the CLI always sends one, so its own retries are safe
    shown = cli(service, "status", task["task_id"])
    assert shown.returncode == 0 and f"task_id: {task['task_id']}" in shown.stdout and "status: QUEUED" in shown.stdout
    same = cli(service, "submit", "noop", "--idempotency-key", "k1", "--json")
    again = cli(service, "submit", "noop", "--idempotency-key", "k1", "--json")
    assert json.loads(same.stdout)["task_id"] == json.loads(again.stdout)["task_id"]

    # refusals: exit 2 with the service's message; unreachable: exit 4
    unknown = cli(service, "submit", "rm-rf")
    assert unknown.returncode == 2 and "unknown task type" in unknown.stderr
    bad = cli(service, "submit", "matmul", "--params", '{"size": "big", "repeat": 1}')
    assert bad.returncode == 2 and "size: expected integer" in bad.stderr
    wrong = cli({**service, "ORCHESTRATOR_TOKEN": "nope"}, "status", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert wrong.returncode == 2 and "401" in wrong.stderr
    missing = cli(service, "status", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.returncode == 2 and "404" in missing.stderr
    down = cli({**service, "ORCHESTRATOR_URL": "http://127.0.0.1:9"}, "status", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert down.returncode == 4 and "cannot reach" in down.stderr


def test_list_all_pages_and_cancel(service: dict[str, str], local_aws: Any) -> None:
    ids = [store(local_aws).create(task_type="noop", params={}, at_ms=1_700_000_000_000 + i).task_id for i in range(5)]
    listed = cli(service, "list", "--status", "QUEUED", "--limit", "2", "--all")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(reversed(ids))
    one_page = cli(service, "list", "--status", "QUEUED", "--limit", "2", "--json")
    assert len(one_page.stdout.splitlines()) == 2 and "more: --cursor" in one_page.stderr
    cancelled = cli(service, "cancel", ids[0], "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "CANCELLED"


def test_wait_shows_progress_and_exits_0_on_success(service: dict[str, str], local_aws: Any) -> None:
    tasks = store(local_aws)
    task_id = tasks.create(task_type="noop", params={}).task_id
    claimed = tasks.claim(task_id, worker="gpu-1", stale_after_ms=60_000).held
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "wait", task_id, "--interval", "0.05", "--timeout", "60"],
        env=service,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # one line per change when stderr is not a terminal
        assert f"{task_id} RUNNING attempts=1 elapsed=" in first
        tasks.finish(claimed, TaskStatus.SUCCEEDED, result_uri=f"s3://{local_aws.bucket}/results/{task_id}/")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert f"{task_id} SUCCEEDED attempts=1" in err
    assert "status: SUCCEEDED" in out and f"result_uri: s3://{local_aws.bucket}/results/{task_id}/" in out


def test_wait_exit_codes_for_timeout_cancel_and_failure(service: dict[str, str], local_aws: Any) -> None:
    tasks = store(local_aws)
    queued = tasks.create(task_type="noop", params={}).task_id
    timed_out = cli(service, "wait", queued, "--interval", "0.05", "--timeout", "0.2")
    assert timed_out.returncode == 3 and "timed out" in timed_out.stderr
    tasks.cancel(queued)
    cancelled = cli(service, "wait", queued, "--json")
    assert cancelled.returncode == 1 and json.loads(cancelled.stdout)["status"] == "CANCELLED"

    # `submit --wait` against a minimal stand-in worker that takes the message and fails the task
    sqs, stop = local_aws.client("sqs"), threading.Event()

    def worker() -> None:
        while not stop.is_set():
            got = sqs.receive_message(QueueUrl=local_aws.queue_url, WaitTimeSeconds=0).get("Messages", [])
            for msg in got:
                task_id = json.loads(msg["Body"])["task_id"]
                claimed = tasks.claim(task_id, worker="gpu-1", stale_after_ms=60_000).held
                tasks.finish(claimed, TaskStatus.FAILED, error="exit code 3")
                sqs.delete_message(QueueUrl=local_aws.queue_url, ReceiptHandle=msg["ReceiptHandle"])
            stop.wait(0.05)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        args = ["submit", "sleep", "-p", "seconds=0", "-p", "exit_code=3", "--wait", "--interval", "0.05"]
        done = cli(service, *args)
    finally:
        stop.set()
        thread.join(10)
    assert done.returncode == 1, done.stderr
    assert "status: FAILED" in done.stdout and "error: exit code 3" in done.stdout


def test_python_m_orchestrator_is_gpuq(service: dict[str, str]) -> None:
    helped = cli(service, "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: gpuq")
    for command in ("submit", "results", "logs", "types", "configure", "list", "cancel", "status", "wait", "serve"):
        assert command in helped.stdout
    bad_mode = cli({**service, "ORCHESTRATOR_AUTH": "cookie"}, "status", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert bad_mode.returncode == 2 and "ORCHESTRATOR_AUTH" in bad_mode.stderr
    broken = Path(service["GPUQ_CONFIG"])
    broken.write_text("url = [unclosed")
    refused = cli({k: v for k, v in service.items() if k != "ORCHESTRATOR_URL"}, "types")
    assert refused.returncode == 2 and str(broken) in refused.stderr and len(refused.stderr.splitlines()) == 1
