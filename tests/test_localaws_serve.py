"""`python -m localaws serve`: a local AWS from the stacks, in its own process, stopped by the test."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import boto3
import pytest

from localaws.serve import stale_reason
from modules.config import ROOT
from modules.layout import STACK_ORDER

READY_TIMEOUT_S = 240  # a synth (if a source changed since the fixture's) plus the build, on a slow machine


def _exported(printed: list[str], name: str) -> str:
    return next(line.split("=", 1)[1].strip() for line in printed if line.startswith(f"export {name}="))


def _lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    """A pipe read in a thread, so the test can wait for a line with a timeout."""
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.fixture
def served(synthesized) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:  # type: ignore[no-untyped-def]
    """The server process, its endpoint (read from its `export AWS_ENDPOINT_URL=` line) and what it printed up to
    `serving until ...`, its last line before it waits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localaws", "serve", "--for", "60", "--outdir", str(synthesized("local"))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: the cleanup below reaches anything it started
    )
    printed: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, printed), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not seen or not seen[-1].startswith("serving until"):
            try:
                line = printed.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"serve not ready after {READY_TIMEOUT_S} s:\n" + "".join(seen))
            assert line is not None, "serve exited before it was ready:\n" + "".join(seen)
            seen.append(line)
        yield proc, _exported(seen, "AWS_ENDPOINT_URL"), seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_serve_answers_real_calls_on_loopback_and_stops_on_sigterm(served) -> None:  # type: ignore[no-untyped-def]
    proc, endpoint, printed = served
    assert endpoint.startswith("http://127.0.0.1:")
    queue_url = _exported(printed, "TASK_QUEUE_URL")
    assert "shutdown Lambda shutdown-gpu-lambda-local" in "".join(printed)
    assert _exported(printed, "PYTHONUNBUFFERED") == "1"  # the adapter's lines reach a log as they happen

    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert queue_url in sqs.list_queues()["QueueUrls"]

    proc.terminate()
    assert proc.wait(timeout=30) == 0
    host, port = endpoint.removeprefix("http://").split(":")
    with pytest.raises(OSError):  # the server went with the process
        socket.create_connection((host, int(port)), timeout=2).close()


def test_stale_when_a_stack_is_missing_or_a_source_is_newer(tmp_path: Path) -> None:
    root, outdir = tmp_path / "repo", tmp_path / "out"
    (root / "modules").mkdir(parents=True)
    source = root / "modules" / "stacks.py"
    source.write_text("# a construct\n")
    assert stale_reason(outdir, root=root, inputs=["modules"]) is not None  # nothing synthesized yet
    for name in STACK_ORDER:
        (outdir / "stacks" / name).mkdir(parents=True)
        (outdir / "stacks" / name / "cdk.tf.json").write_text("{}")
    os.utime(source, (time.time() - 60, time.time() - 60))
    assert stale_reason(outdir, root=root, inputs=["modules"]) is None
    os.utime(source, (time.time() + 60, time.time() + 60))
    assert stale_reason(outdir, root=root, inputs=["modules"]) == "modules/stacks.py changed since the last synth"
