"""Task lifecycle throughput: no-op tasks through the real adapter beside a bare boto3 loop, in the same run.

Each series consumes its own queue (visibility 300 s, redrive after 3 receives) and table of the same shape in one
moto server (a child process on 127.0.0.1), in rounds whose order rotates so drift hits every series alike:
- bare:    receive (1 message) -> conditional claim UpdateItem -> conditional complete UpdateItem -> delete.
           The calls any worker must make per task; it runs nothing.
- model:   the same four calls, but claim and finish through core.store.TaskStore (the item's full shape:
           heartbeat_at, updated_at, ttl, the worker+attempt fence). Moto parses and validates every expression in
           Python, and its cost grows with an expression's size, so this series shows what the richer writes cost
           there before any adapter code runs.
- adapter: `adapter.worker.Worker.turn()` as built by `python -m adapter` (JSON logs at INFO to /dev/null): its
           calls plus its bookkeeping - work dir, heartbeat thread, param validation, and running the `noop`
           type's argv (`true`) as a real process, since running a process is what a command task is. Configured
           as on an instance: liveness on (a hosts table, the instance id from a local metadata service,
           localaws.metadata), each settle's cost (GPU_HOURLY_USD) and metrics shipped to a log group. Those two
           make timed calls (liveness at most every LIVENESS_SECONDS, the metrics' PutLogEvents once a minute), not
           calls per task: they are counted apart, as calls in the run, and their time stays in the adapter's.
A separate series times just spawning `true` the way the runner does, to show how much of the gap is that.

Per series it reports the AWS calls per task by operation (botocore's before-call/after-call events on every client
the series uses) and the CPU milliseconds per task of this process (time.process_time around the series: all its
threads, none of its children - moto and the job processes run in child processes and are not counted). The aim:
the adapter does >= 0.8 of the bare loop's tasks/s, and makes no AWS call per short task that the bare loop does
not; the calls it makes beyond the bare loop's are printed per task.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapter.__main__ import build  # noqa: E402  (after the path fix: runnable as a script)
from adapter.procs import death_signal_prefix  # noqa: E402
from bench.resources import create_host_resources, create_task_resources  # noqa: E402
from bench.submit_latency import child, measure  # noqa: E402
from core import logs  # noqa: E402
from core.message import TaskMessage  # noqa: E402
from core.metrics import LogShipper  # noqa: E402
from core.store import TaskStore  # noqa: E402
from core.tasks import TaskStatus  # noqa: E402
from localaws.metadata import MetadataServer  # noqa: E402
from localaws.server import free_port  # noqa: E402

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
SERIES = ("bare", "model", "adapter")
TARGET_RATIO = 0.8


class AwsClock:
    """Calls made and time spent inside boto3 calls, per series and operation, via botocore's before-call/after-call
    events: splits each series' time per task into AWS calls (moto's work + HTTP) and everything else (the adapter's
    bookkeeping), and shows which calls a series makes."""

    def __init__(self) -> None:
        self.series: str | None = None  # None: not recording (submits, warm-up)
        self.count: dict[tuple[str, str], int] = {}  # (series, operation) -> calls
        self.took: dict[tuple[str, str], float] = {}  # (series, operation) -> seconds
        self.timed: dict[tuple[str, str], int] = {}  # (series, operation) -> calls made by the clock, not per task
        self._started = 0.0
        self._attached: set[int] = set()

    def attach(self, client: Any, *, timed: bool = False) -> None:
        """`timed`: the client's calls come from a clock (liveness, metrics), not from tasks: counted apart."""
        # Once per client: a handler registered twice would count each call twice.
        if id(client) in self._attached:
            return
        self._attached.add(id(client))
        client.meta.events.register("before-call", self._before)
        client.meta.events.register("after-call", lambda model=None, **_: self._after(model, timed))

    def clear(self) -> None:
        self.count.clear()
        self.took.clear()
        self.timed.clear()

    def _before(self, **_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, model: Any, timed: bool) -> None:
        if self.series is not None:
            name = model.name if model is not None else "?"
            key, calls = ((self.series, f"{name} (timed)"), self.timed) if timed else ((self.series, name), self.count)
            self.took[key] = self.took.get(key, 0.0) + time.perf_counter() - self._started
            calls[key] = calls.get(key, 0) + 1

    def per_task(self, n: int) -> dict[str, dict[str, float]]:
        """series -> operation -> calls per task."""
        out: dict[str, dict[str, float]] = {}
        for (series, op), calls in sorted(self.count.items()):
            out.setdefault(series, {})[op] = round(calls / n, 2)
        return out

    def seconds(self, series: str) -> float:
        return sum(t for (s, _), t in self.took.items() if s == series)


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


def create_adapter_extras(session: Any, endpoint: str, name: str) -> dict[str, str]:
    """What an instance's adapter has beside the task resources (bench/resources.py), and a price to record."""
    return {**create_host_resources(session, endpoint, name), "GPU_HOURLY_USD": "1.006"}


def submit(store: TaskStore, sqs: Any, queue_url: str, n: int) -> list[str]:
    """As the orchestrator submits (item, then its message with the item's enqueue_id), minus the HTTP."""
    ids = []
    for _ in range(n):
        task = store.create(task_type="noop", params={})
        sqs.send_message(QueueUrl=queue_url, MessageBody=TaskMessage(task.task_id, task.enqueue_id).encode())
        ids.append(task.task_id)
    return ids


def bare_loop(sqs: Any, table: Any, queue_url: str, n: int) -> None:
    """`n` tasks through the unavoidable calls only."""
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


def model_loop(sqs: Any, store: TaskStore, queue_url: str, n: int) -> None:
    """The same four calls, with TaskStore's claim and finish (the full item: heartbeat, ttl, fencing)."""
    for _ in range(n):
        (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=20)["Messages"]
        parsed = TaskMessage.parse(message["Body"])
        claimed = store.claim(parsed.task_id, worker="model", stale_after_ms=300_000, enqueue_id=parsed.enqueue_id)
        store.finish(claimed.held, TaskStatus.SUCCEEDED)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def adapter_loop(worker: Any, n: int) -> None:
    """`n` turns of the worker's loop: each receives one message and takes its task through to the end."""
    for _ in range(n):
        worker.turn()


def spawn_only(n: int, work_dir: str) -> None:
    """Run `true` n times the way the runner starts a job (own session, death signal, files for logs)."""
    launcher = death_signal_prefix()
    for _ in range(n):
        with open(os.path.join(work_dir, "o"), "wb") as out, open(os.path.join(work_dir, "e"), "wb") as err:
            subprocess.Popen(
                [*launcher, "true"], stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            ).wait()


def check_all(store: TaskStore, ids: list[str]) -> None:
    bad = [i for i in ids if getattr(store.get(i), "status", None) is not TaskStatus.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed, e.g. {bad[0]}")


def quiet_production_logs() -> Any:
    """The adapter's logging as in production (JSON lines at INFO, formatted and written), but into /dev/null
    rather than this terminal. core.logs' handler always writes to sys.stdout, so it is swapped for one on
    /dev/null with the same formatter. Returns the file, to close after the last log line."""
    logs.setup("INFO", worker="bench")
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the caller closes it
    handler = logging.StreamHandler(devnull)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    return devnull


class Bench:
    """The three series' resources in one moto server, and one timed pass of a series (wall, CPU, AWS calls)."""

    def __init__(self, endpoint: str, work: str, metadata_url: str) -> None:
        session = boto3.session.Session(
            region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        dynamodb = session.resource("dynamodb", endpoint_url=endpoint)
        # One queue + table per series, so each series' table grows alike (moto's per-call cost grows with it).
        self.names = {s: create_resources(session, endpoint, f"bench_{s}_{uuid.uuid4().hex[:6]}") for s in SERIES}
        self.stores = {s: TaskStore(dynamodb.Table(self.names[s]["TASK_TABLE_NAME"])) for s in SERIES}
        env = {
            **CREDS,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            **self.names["adapter"],
            "WORK_DIR": work,
            "WORKER_ID": "bench",
            "IDLE_WINDOW_SECONDS": "0",
            "DLQ_SWEEP_SECONDS": "3600",
            "INSTANCE_METADATA_URL": metadata_url,
            **create_adapter_extras(session, endpoint, f"bench_adapter_{uuid.uuid4().hex[:6]}"),
        }
        self.worker = build(env, session=session)
        self.work = work
        bare_table = self.stores["bare"].table
        self.drain: dict[str, Callable[[int], None]] = {
            "bare": lambda k: bare_loop(self.sqs, bare_table, self.queue("bare"), k),
            "model": lambda k: model_loop(self.sqs, self.stores["model"], self.queue("model"), k),
            "adapter": lambda k: adapter_loop(self.worker, k),
        }
        self.clock = AwsClock()
        # Every client any series calls through, the adapter's S3 client included (a task's uploads are calls too).
        for client in (self.sqs, bare_table.meta.client, self.worker.sqs, self.worker.store.table.meta.client):
            self.clock.attach(client)
        self.clock.attach(self.worker.runner.s3)
        if self.worker.liveness is not None:
            self.clock.attach(self.worker.liveness.hosts.dynamodb, timed=True)
        shipper = self.worker.meter.write
        if not isinstance(shipper, LogShipper):
            raise RuntimeError("the adapter's metrics are not shipped (METRICS_LOG_GROUP): not as on an instance")
        self.clock.attach(shipper.logs, timed=True)
        self.wall = dict.fromkeys((*SERIES, "spawn"), 0.0)
        self.cpu = dict.fromkeys((*SERIES, "spawn"), 0.0)

    def queue(self, series: str) -> str:
        return self.names[series]["TASK_QUEUE_URL"]

    def one(self, series: str, k: int) -> None:
        """Submit k tasks (untimed), drain them (timed: wall, this process's CPU, AWS calls), check them (untimed)."""
        ids = submit(self.stores[series], self.sqs, self.queue(series), k)
        self.clock.series = series
        self._timed(series, lambda: self.drain[series](k))
        self.clock.series = None
        check_all(self.stores[series], ids)  # outside the timing: every task really went through

    def spawn(self, k: int) -> None:
        self._timed("spawn", lambda: spawn_only(k, self.work))

    def _timed(self, series: str, fn: Callable[[], None]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.cpu[series] += time.process_time() - cpu
        self.wall[series] += time.perf_counter() - wall

    def reset(self) -> None:
        self.clock.clear()
        for recorded in (self.wall, self.cpu):
            for key in recorded:
                recorded[key] = 0.0


def lifecycle(endpoint: str, tasks: int, rounds: int) -> dict[str, Any]:
    with MetadataServer("i-0bench00000000000") as imds:  # 127.0.0.1, stopped with the block
        return _lifecycle(Bench(endpoint, tempfile.mkdtemp(prefix="lifecycle-"), imds.url), tasks, rounds)


def _lifecycle(bench: Bench, tasks: int, rounds: int) -> dict[str, Any]:
    devnull = quiet_production_logs()
    try:
        for series in SERIES:  # warm connections and imports outside the timed rounds
            bench.one(series, 5)
        bench.spawn(5)
        bench.reset()
        per_round = max(1, tasks // rounds)
        for r in range(rounds):
            for series in SERIES[r % 3 :] + SERIES[: r % 3]:  # rotate the order so drift hits every series alike
                bench.one(series, per_round)
            bench.spawn(per_round)
    finally:
        logging.getLogger().handlers.clear()
        devnull.close()
    return summarize(bench, per_round * rounds, rounds)


def summarize(bench: Bench, n: int, rounds: int) -> dict[str, Any]:
    wall, clock = bench.wall, bench.clock
    rate = {k: n / wall[k] for k in SERIES}
    calls = clock.per_task(n)
    bare_calls, adapter_calls = calls.get("bare", {}), calls.get("adapter", {})
    beyond_bare = {
        op: round(count - bare_calls.get(op, 0.0), 2)
        for op, count in adapter_calls.items()
        if count - bare_calls.get(op, 0.0) >= 0.01
    }
    return {
        "tasks_per_series": n,
        "rounds": rounds,
        "tasks_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ms_per_task": {k: round(1000 * v / n, 2) for k, v in wall.items()},
        "cpu_ms_per_task": {k: round(1000 * v / n, 2) for k, v in bench.cpu.items()},
        "aws_calls_per_task": {k: round(sum(v.values()), 2) for k, v in calls.items()},
        "aws_calls_per_task_by_op": calls,
        "adapter_calls_per_task_beyond_bare": beyond_bare,
        "adapter_timed_calls_in_run": {op: n for (s, op), n in sorted(clock.timed.items()) if s == "adapter"},
        "adapter_seconds": round(wall["adapter"], 1),
        "ms_per_task_in_aws_calls": {k: round(1000 * clock.seconds(k) / n, 2) for k in SERIES},
        "ms_per_task_by_call": {f"{s}.{op}": round(1000 * t / n, 2) for (s, op), t in sorted(clock.took.items())},
        "ms_per_task_outside_aws_calls": {k: round(1000 * (wall[k] - clock.seconds(k)) / n, 2) for k in SERIES},
        "ratio_adapter_to_bare": round(rate["adapter"] / rate["bare"], 3),
        "ratio_adapter_to_model": round(rate["adapter"] / rate["model"], 3),
    }


def report(result: dict[str, Any]) -> None:
    ms, cpu, aws, other = (
        result["ms_per_task"],
        result["cpu_ms_per_task"],
        result["ms_per_task_in_aws_calls"],
        result["ms_per_task_outside_aws_calls"],
    )
    rate, ratio = result["tasks_per_s"], result["ratio_adapter_to_bare"]
    print(
        f"lifecycle: adapter {rate['adapter']} tasks/s vs bare loop {rate['bare']} tasks/s -> ratio {ratio:.2f}; "
        f"vs the same 4 calls through TaskStore {rate['model']} tasks/s -> ratio {result['ratio_adapter_to_model']:.2f}"
    )
    for k in SERIES:
        ops = ", ".join(f"{op} {n:.2f}" for op, n in result["aws_calls_per_task_by_op"].get(k, {}).items())
        print(
            f"  {k:>8}: {ms[k]:7.2f} ms/task = {aws[k]:7.2f} in AWS calls + {other[k]:6.2f} other; "
            f"CPU {cpu[k]:6.2f} ms/task; AWS calls/task {result['aws_calls_per_task'].get(k, 0):.2f} ({ops})"
        )
    print(f"  spawning the no-op process alone: {ms['spawn']:.2f} ms/task, CPU {cpu['spawn']:.2f} ms/task")
    print("  (CPU: this process only, all its threads; moto and the job processes are child processes, not counted)")
    timed = ", ".join(f"{op} {n}" for op, n in result["adapter_timed_calls_in_run"].items()) or "none"
    print(f"  adapter's timed calls (liveness, metrics) in its {result['adapter_seconds']} s: {timed}")
    beyond = result["adapter_calls_per_task_beyond_bare"]
    extra = ", ".join(f"{op} +{n:.2f}" for op, n in beyond.items()) or "none"
    fast = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(
        f"aim: adapter >= {TARGET_RATIO} x bare tasks/s: {ratio:.2f} -> {fast}; "
        f"no AWS call per short task beyond the bare loop's: {'met' if not beyond else 'NOT met'} "
        f"(adapter calls per task beyond bare: {extra})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=240, help="no-op tasks per series")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--submit-n", type=int, default=100, help="submits per series for submit latency")
    args = parser.parse_args(argv)
    with moto_server() as endpoint:
        result = lifecycle(endpoint, args.tasks, args.rounds)
        print(json.dumps(result, indent=2))
        report(result)
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
