"""Task lifecycle throughput: no-op tasks through the real adapter beside a bare boto3 loop, in the same run.

Each series consumes its own queue (visibility 300 s, redrive after 3 receives) and table of the same shape in one
moto server (a child process on 127.0.0.1), in rounds whose order rotates so drift hits every series alike:
- bare:    receive (1 message) -> conditional claim UpdateItem -> conditional complete UpdateItem -> delete.
           The calls any worker must make per task; it runs nothing.
- model:   the same four calls, but claim and finish through adapter.model.TaskStore (the item's full shape:
           heartbeat_at, updated_at, ttl, the worker+attempt fence). Moto parses and validates every expression in
           Python, and its cost grows with an expression's size, so this series shows what the richer writes cost
           there before any adapter code runs.
- adapter: `adapter.worker.Worker.turn()` as built by `python -m adapter` (JSON logs at INFO to /dev/null): the same
           four calls plus its bookkeeping - work dir, heartbeat thread, param validation, and running the `noop`
           type's argv (`true`) as a real process, since running a process is what a command task is.
A separate series times just spawning `true` the way the runner does, to show how much of the gap is that.

Then bench/submit_latency.py's `measure(endpoint_url, n)` reports POST /tasks
latency beside the raw PutItem + SendMessage it wraps, against the same moto server.
Usage: python bench/lifecycle.py [--tasks 240] [--rounds 6] [--submit-n 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core import logs  # noqa: E402  (after the path fix: runnable as a script)
from adapter.__main__ import build  # noqa: E402
from core.store import TaskStore  # noqa: E402
from core.tasks import TaskStatus  # noqa: E402
from adapter.procs import death_signal_prefix  # noqa: E402
from bench.resources import create_task_resources  # noqa: E402
from bench.submit_latency import child, measure  # noqa: E402
from localaws.server import free_port  # noqa: E402

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


class AwsClock:
    """Time spent inside boto3 calls, per series, via botocore's before-call/after-call events: splits each
    series' time per task into AWS calls (moto's work + HTTP) and everything else (the adapter's bookkeeping)."""

    def __init__(self) -> None:
        self.series: str | None = None  # None: not recording (submits, warm-up)
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.by_op: dict[str, float] = {}
        self._started = 0.0

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call", self._before)
        client.meta.events.register("after-call", self._after)

    def _before(self, **_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, model: Any = None, **_: Any) -> None:
        if self.series is not None:
            took = time.perf_counter() - self._started
            self.spent[self.series] = self.spent.get(self.series, 0.0) + took
            self.calls[self.series] = self.calls.get(self.series, 0) + 1
            op = f"{self.series}.{model.name if model is not None else '?'}"
            self.by_op[op] = self.by_op.get(op, 0.0) + took


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server in a child process on 127.0.0.1, started and stopped like the submit bench's servers."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(argv, {"PATH": os.environ.get("PATH", ""), **CREDS}, f"{endpoint}/moto-api/", timeout_s=60):
        yield endpoint


def create_resources(session: Any, endpoint: str, name: str) -> dict[str, str]:
    """What the stacks declare for the adapter: queue + DLQ and table (bench/resources.py), and a bucket."""
    names = create_task_resources(session, endpoint, name)
    bucket = f"{name}-artifacts".replace("_", "-")
    session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return {**names, "ARTIFACTS_BUCKET": bucket}


def submit(store: TaskStore, sqs: Any, queue_url: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        task_id = store.create(task_type="noop", params={})["task_id"]
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"task_id": task_id, "type": "noop"}))
        ids.append(str(task_id))
    return ids


def bare_loop(sqs: Any, table: Any, queue_url: str, n: int) -> float:
    """Seconds to take `n` tasks through the unavoidable calls only."""
    start = time.perf_counter()
    for _ in range(n):
        (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=20)["Messages"]
        task_id = json.loads(message["Body"])["task_id"]
        now = int(time.time() * 1000)
        claimed = table.update_item(
            Key={"task_id": task_id},
            UpdateExpression="SET #s = :r, attempts = attempts + :one, worker = :w, started_at = :t",
            ConditionExpression="#s = :q",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":r": "RUNNING", ":q": "QUEUED", ":one": 1, ":w": "bare", ":t": now},
            ReturnValues="ALL_NEW",
        )["Attributes"]
        table.update_item(
            Key={"task_id": task_id},
            UpdateExpression="SET #s = :done, finished_at = :t",
            ConditionExpression="#s = :r AND attempts = :a",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":done": "SUCCEEDED", ":r": "RUNNING", ":a": claimed["attempts"], ":t": now},
        )
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return time.perf_counter() - start


def model_loop(sqs: Any, store: TaskStore, queue_url: str, n: int) -> float:
    """The same four calls, with TaskStore's claim and finish (the full item: heartbeat, ttl, fencing)."""
    start = time.perf_counter()
    for _ in range(n):
        (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=20)["Messages"]
        task_id = json.loads(message["Body"])["task_id"]
        item = store.claim(task_id, worker="model", stale_after_ms=300_000)
        store.finish(task_id, worker="model", attempt=item["attempts"], status=TaskStatus.SUCCEEDED)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return time.perf_counter() - start


def spawn_only(n: int, work_dir: str) -> float:
    """Seconds to run `true` n times the way the runner starts a job (own session, death signal, files for logs)."""
    launcher = death_signal_prefix()
    start = time.perf_counter()
    for _ in range(n):
        with open(os.path.join(work_dir, "o"), "wb") as out, open(os.path.join(work_dir, "e"), "wb") as err:
            subprocess.Popen(
                [*launcher, "true"], stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            ).wait()
    return time.perf_counter() - start


def check_all(store: TaskStore, ids: list[str]) -> None:
    bad = [i for i in ids if (store.get(i) or {}).get("status") != "SUCCEEDED"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed, e.g. {bad[0]}")


SERIES = ("bare", "model", "adapter")


def lifecycle(endpoint: str, tasks: int, rounds: int) -> dict[str, Any]:
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    sqs = session.client("sqs", endpoint_url=endpoint)
    dynamodb = session.resource("dynamodb", endpoint_url=endpoint)
    # One queue + table per series, so each series' table grows alike (moto's per-call cost grows with it).
    names = {s: create_resources(session, endpoint, f"bench_{s}_{uuid.uuid4().hex[:6]}") for s in SERIES}
    stores = {s: TaskStore(dynamodb.Table(names[s]["TASK_TABLE_NAME"])) for s in SERIES}
    work = tempfile.mkdtemp(prefix="lifecycle-")
    env = {
        **CREDS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        **names["adapter"],
        "WORK_DIR": work,
        "WORKER_ID": "bench",
        "IDLE_WINDOW_SECONDS": "0",
        "DLQ_SWEEP_SECONDS": "3600",
    }
    worker = build(env, session=session)
    logs.setup("bench")  # production logging (JSON, INFO), but into /dev/null rather than this terminal
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below, after the last log line
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    bare_table = stores["bare"].table
    drain = {
        "bare": lambda k: bare_loop(sqs, bare_table, names["bare"]["TASK_QUEUE_URL"], k),
        "model": lambda k: model_loop(sqs, stores["model"], names["model"]["TASK_QUEUE_URL"], k),
        "adapter": lambda k: sum(_timed(worker.turn) for _ in range(k)),  # one message per turn
    }
    clock = AwsClock()
    for client in (sqs, bare_table.meta.client, worker.sqs, worker.store.table.meta.client):
        clock.attach(client)

    def one(series: str, k: int) -> float:
        ids = submit(stores[series], sqs, names[series]["TASK_QUEUE_URL"], k)
        clock.series = series
        took = float(drain[series](k))
        clock.series = None
        check_all(stores[series], ids)  # outside the timing: every task really went through
        return took

    for series in SERIES:  # warm connections and imports outside the timed rounds
        one(series, 5)
    for recorded in (clock.spent, clock.calls, clock.by_op):
        recorded.clear()
    per_round = max(1, tasks // rounds)
    spent = dict.fromkeys((*SERIES, "spawn"), 0.0)
    for r in range(rounds):
        for series in SERIES[r % 3 :] + SERIES[: r % 3]:  # rotate the order so drift hits every series alike
            spent[series] += one(series, per_round)
        spent["spawn"] += spawn_only(per_round, work)
    logging.getLogger().handlers.clear()
    devnull.close()
    n = per_round * rounds
    rate = {k: n / spent[k] for k in SERIES}
    return {
        "tasks_per_series": n,
        "rounds": rounds,
        "tasks_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ms_per_task": {k: round(1000 * v / n, 2) for k, v in spent.items()},
        "aws_calls_per_task": {k: round(v / n, 2) for k, v in clock.calls.items()},
        "ms_per_task_in_aws_calls": {k: round(1000 * v / n, 2) for k, v in clock.spent.items()},
        "ms_per_task_by_call": {k: round(1000 * v / n, 2) for k, v in sorted(clock.by_op.items())},
        "ms_per_task_outside_aws_calls": {k: round(1000 * (spent[k] - clock.spent.get(k, 0.0)) / n, 2) for k in SERIES},
        "ratio_adapter_to_bare": round(rate["adapter"] / rate["bare"], 3),
        "ratio_adapter_to_model": round(rate["adapter"] / rate["model"], 3),
    }


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=240, help="no-op tasks per series")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--submit-n", type=int, default=100, help="submits per series for submit latency")
    args = parser.parse_args(argv)
    with moto_server() as endpoint:
        result = lifecycle(endpoint, args.tasks, args.rounds)
        print(json.dumps(result, indent=2))
        ms, aws, other = (
            result["ms_per_task"],
            result["ms_per_task_in_aws_calls"],
            result["ms_per_task_outside_aws_calls"],
        )
        rate = result["tasks_per_s"]
        print(
            f"lifecycle: adapter {rate['adapter']} tasks/s vs bare loop {rate['bare']} tasks/s -> "
            f"ratio {result['ratio_adapter_to_bare']:.2f} (target >= 0.8); vs the same 4 calls through TaskStore "
            f"{rate['model']} tasks/s -> ratio {result['ratio_adapter_to_model']:.2f}"
        )
        for k in SERIES:
            print(f"  {k:>8}: {ms[k]:7.2f} ms/task = {aws[k]:7.2f} in AWS calls + {other[k]:6.2f} other")
        print(f"  spawning the no-op process alone: {ms['spawn']:.2f} ms")
        latency = measure(endpoint, args.submit_n)
        print(json.dumps({"submit_latency": latency}, indent=2))
        for name in ("post", "post_keyed"):
            s, raw = latency["ms"][name], latency["ms"]["raw"]
            print(
                f"submit {name:>10}: p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms | raw PutItem+SendMessage "
                f"p50 {raw['p50']:.2f} ms p99 {raw['p99']:.2f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
