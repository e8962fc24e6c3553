"""Submit latency: `POST /tasks` beside the two raw calls it wraps (PutItem + SendMessage), in the same run.

`measure(endpoint_url, n)` takes an AWS endpoint (moto's server here), creates its own queue, DLQ, table and a
running GPU instance there, starts the service with `python -m orchestrator serve` (uvicorn on 127.0.0.1, bearer
token on) in a child process, and times, interleaved so drift hits all series alike:
- raw:        table.put_item + sqs.send_message from this process (the floor: what any submit must do);
- post:       POST /tasks without an idempotency key (PutItem, SendMessage, UpdateItem enqueued_at,
              DescribeInstances, plus HTTP, auth and validation);
- post_keyed: POST /tasks with a fresh idempotency key (the item + marker go in one TransactWriteItems).
The GPU instance is running, so no StartInstances is in the loop (the steady state while work flows).

`__main__` starts moto's server on 127.0.0.1 in a child process, measures, stops it.
Usage: PYTHONPATH=. python bench/submit_latency.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
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
import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as a script
    sys.path.insert(0, str(REPO))

from bench.resources import create_task_resources  # noqa: E402
from core.message import TaskMessage  # noqa: E402
from localaws.server import free_port  # noqa: E402

REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@contextmanager
def child(
    argv: list[str], env: dict[str, str], ready_url: str, timeout_s: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends (the block gets its Popen); ready once `ready_url` answers. Its
    output goes to a temporary file (a pipe nobody drains would block a chatty server), shown only if it dies early."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{argv} exited: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    httpx.get(ready_url, timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{argv} not ready after {timeout_s}s") from None
                    time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def create_resources(endpoint_url: str) -> dict[str, str]:
    """Queue + DLQ, table with the status GSI (bench/resources.py), one running instance; the service's env."""
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    names = create_task_resources(session, endpoint_url, f"bench_{uuid.uuid4().hex[:8]}")
    ec2 = session.client("ec2", endpoint_url=endpoint_url)
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    return {**names, "GPU_INSTANCE_IDS": instance}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

    return {"p50": round(rank(0.50), 3), "p99": round(rank(0.99), 3), "mean": round(sum(ordered) / len(ordered), 3)}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def measure(endpoint_url: str, n: int) -> dict[str, Any]:
    """Latency in ms (p50/p99/mean) of `n` submits per series and the ratios POST / raw."""
    names = create_resources(endpoint_url)
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        **CREDS,
        **names,
        "AWS_ENDPOINT_URL": endpoint_url,
        "ORCHESTRATOR_TOKEN": token,
        # The controller each submit nudges: no such function here (moto would run it in Docker), so the nudge is
        # refused at once (ResourceNotFoundException), which the API reports as `gpu` and the submit still succeeds:
        # the measured POST includes that one call, as a deployed submit includes its asynchronous invoke.
        "CONTROLLER_FUNCTION_NAME": "bench-no-controller",
    }
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    table = session.resource("dynamodb", endpoint_url=endpoint_url).Table(names["TASK_TABLE_NAME"])
    sqs = session.client("sqs", endpoint_url=endpoint_url)
    base = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", str(port)]
    series: dict[str, list[float]] = {"raw": [], "post": [], "post_keyed": []}

    def raw() -> None:
        task_id = uuid.uuid4().hex
        at = int(time.time() * 1000)
        table.put_item(
            Item={
                "task_id": task_id,
                "status": "QUEUED",
                "type": "noop",
                "params": {},
                "created_at": at,
                "updated_at": at,
                "attempts": 0,
            },
            ConditionExpression="attribute_not_exists(task_id)",
        )
        sqs.send_message(QueueUrl=names["TASK_QUEUE_URL"], MessageBody=TaskMessage(task_id).encode())

    with (
        child(serve, env, f"{base}/openapi.json"),
        httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as http,
    ):

        def post(keyed: bool) -> None:
            body: dict[str, Any] = {"type": "noop", "params": {}}
            if keyed:
                body["idempotency_key"] = uuid.uuid4().hex
            resp = http.post("/tasks", json=body)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /tasks answered {resp.status_code}: {resp.text}")

        for _ in range(5):  # warm connections, imports and the instance start (first POST starts the instance)
            raw()
            post(False)
            post(True)
        for _ in range(n):
            series["raw"].append(_timed(raw))
            series["post"].append(_timed(lambda: post(False)))
            series["post_keyed"].append(_timed(lambda: post(True)))

    stats = {name: percentiles(samples) for name, samples in series.items()}
    return {
        "n": n,
        "served_by": "uvicorn child process on 127.0.0.1 (python -m orchestrator serve)",
        "aws": endpoint_url,
        "ms": stats,
        "ratio_post_to_raw": {q: round(stats["post"][q] / stats["raw"][q], 2) for q in ("p50", "p99")},
        "ratio_post_keyed_to_raw": {q: round(stats["post_keyed"][q] / stats["raw"][q], 2) for q in ("p50", "p99")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="submits per series")
    args = parser.parse_args(argv)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(moto, {"PATH": os.environ.get("PATH", ""), **CREDS}, f"{endpoint}/moto-api/"):
        result = measure(endpoint, args.n)
    print(json.dumps(result, indent=2))
    ms = result["ms"]
    for name in ("post", "post_keyed"):
        print(
            f"{name:>10}: p50 {ms[name]['p50']:7.2f} ms  p99 {ms[name]['p99']:7.2f} ms   "
            f"raw PutItem+SendMessage: p50 {ms['raw']['p50']:6.2f} ms  p99 {ms['raw']['p99']:6.2f} ms   "
            f"ratio p50 {ms[name]['p50'] / ms['raw']['p50']:.2f}x  p99 {ms[name]['p99'] / ms['raw']['p99']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
