"""The stopping race (the seed's failure 4): a task submitted while the GPU instance is `stopping`.

moto's EC2 has no `stopping` state (StopInstances lands on `stopped` at once) and never refuses StartInstances, so
these tests go through `Ec2StoppingProxy`: a 127.0.0.1 pass-through in front of the moto server that makes chosen
instances look the way AWS shows them mid-stop (DescribeInstances: `stopping`; StartInstances:
IncorrectInstanceState). Every other answer is moto's own; the handler builds its real clients from env.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.test_shutdown_moto import Stack, invoke, stack_from


@pytest.fixture
def stack(local_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Stack:
    s = stack_from(local_aws)
    for key, value in s.env.items():
        monkeypatch.setenv(key, value)
    return s


class Ec2StoppingProxy:
    """Forwards every request to moto. An instance in `stopping` reads as mid-stop (for the given number of
    DescribeInstances answers, or until removed when None), as does one in `stopping_until` while `clock()` is before
    its time; StartInstances on such an instance, or on one in `refuse_start`, gets AWS's IncorrectInstanceState.
    `started_at` records `clock()` at each StartInstances that went through to moto."""

    ERROR = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>IncorrectInstanceState</Code>'
        "<Message>The instance '{0}' is not in a state from which it can be started.</Message></Error></Errors>"
        "<RequestID>proxy</RequestID></Response>"
    )

    def __init__(self, upstream: str, clock: Callable[[], float] = time.time) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.clock = clock
        self.stopping: dict[str, int | None] = {}
        self.stopping_until: dict[str, float] = {}
        self.refuse_start: set[str] = set()
        self.started_at: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, headers, payload = proxy.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        form = parse_qs(body.decode()) if "x-www-form-urlencoded" in headers.get("Content-Type", "") else {}
        action = form.get("Action", [""])[0]
        if action == "StartInstances":
            ids = [v[0] for k, v in form.items() if k.startswith("InstanceId.")]
            refused = [i for i in ids if i in self.stopping or i in self._timed() or i in self.refuse_start]
            if refused:
                return 400, [("Content-Type", "text/xml")], self.ERROR.format(refused[0]).encode()
            for iid in ids:
                self.started_at.setdefault(iid, []).append(self.clock())
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        try:
            conn.request(method, path, body=body, headers={k: v for k, v in headers.items() if k.lower() != "host"})
            resp = conn.getresponse()
            payload = resp.read()
            out_headers = resp.getheaders()
        finally:
            conn.close()
        if action == "DescribeInstances":
            text = payload.decode()
            with self.lock:
                shown = list(self.stopping) + self._timed()
                for iid, left in list(self.stopping.items()):
                    if left is not None:  # counting down to the moment the OS has finished shutting down
                        if left <= 1:
                            del self.stopping[iid]
                        else:
                            self.stopping[iid] = left - 1
            for iid in shown:
                text = re.sub(
                    rf"(<instanceId>{iid}</instanceId>.*?)<instanceState>.*?</instanceState>",
                    r"\1<instanceState><code>64</code><name>stopping</name></instanceState>",
                    text,
                    flags=re.S,
                )
            payload = text.encode()
        return resp.status, out_headers, payload

    def _timed(self) -> list[str]:
        now = self.clock()
        return [iid for iid, until in self.stopping_until.items() if now < until]

    def __enter__(self) -> Ec2StoppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_task_submitted_after_the_stop_is_started_by_the_next_run(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(capsys)["decision"]["action"] == "STOP"
    stack.put_task("QUEUED")
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
    assert invoke(capsys)["decision"]["action"] == "START" and stack.state() == "running"


def test_task_submitted_while_stopping_waits_for_next_run(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        proxy.stopping[stack.instance_id] = None
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)  # STOPPING_WAIT_SECONDS=0: cannot wait, must say so and not fail
        assert record["observation"]["instances"][0]["state"] == "stopping"
        assert record["decision"]["action"] == "NONE" and "next scheduled run" in record["decision"]["reason"]
        assert record["decision"]["stopping_ids"] == [stack.instance_id]
        proxy.stopping.clear()  # the OS finished shutting down
        record = invoke(capsys)
        assert record["decision"]["action"] == "START" and stack.state() == "running"


def test_task_submitted_while_stopping_is_started_in_the_same_run(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("STOPPING_WAIT_SECONDS", "10")
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        # Mid-stop for the handler's first look and its first poll; `stopped` from the second poll on.
        proxy.stopping[stack.instance_id] = 2
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)
        assert record["first_decision"]["stopping_ids"] == [stack.instance_id]
        assert record["after_wait"]["instances"][0]["state"] == "stopped"
        assert record["decision"]["action"] == "START" and stack.state() == "running"


def test_start_refused_with_incorrect_instance_state_is_logged_not_raised(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        stack.ec2.stop_instances(InstanceIds=[stack.instance_id])
        proxy.refuse_start.add(stack.instance_id)  # DescribeInstances lagged: it said stopped, EC2 says stopping
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)
        assert record["decision"]["action"] == "START"
        assert record["outcome"] == [
            {
                "instance_id": stack.instance_id,
                "error": "IncorrectInstanceState",
                "note": "left for the next scheduled run",
            }
        ]
        assert stack.state() == "stopped"


def test_stopped_ones_start_before_the_wait_and_the_stopping_one_after_it_in_the_same_run(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks, three instances: one running, one stopped, one stopping. The stopped one is started at once
    (not after the wait), the stopping one as soon as it has stopped, within the run's time."""
    ec2 = stack.ec2
    stopped, stopping = (
        i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]
    )
    ec2.stop_instances(InstanceIds=[stopped, stopping])
    with Ec2StoppingProxy(stack.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("STOPPING_WAIT_SECONDS", "10")
        monkeypatch.setenv("GPU_INSTANCE_IDS", ",".join([stack.instance_id, stopped, stopping]))
        proxy.stopping[stopping] = 2  # mid-stop for the first look and the first poll
        for _ in range(3):
            stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{}")
        record = invoke(capsys)
    assert record["first_decision"]["instance_ids"] == [stopped]
    assert record["first_decision"]["stopping_ids"] == [stopping]
    assert record["decision"]["action"] == "START" and record["decision"]["instance_ids"] == [stopping]
    assert [o["instance_id"] for o in record["outcome"]] == [stopped, stopping]
    assert proxy.started_at[stopped][0] < proxy.started_at[stopping][0]
    reservations = ec2.describe_instances(InstanceIds=[stack.instance_id, stopped, stopping])["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"running"}
