"""The end-to-end demo, headless, as `make local` runs it: the GPU host installing its adapter through its own
bootstrap, tasks and a file through the CLI (upload, submit, wait, download), results in S3, idle stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modules.config import ROOT


def test_demo_runs_end_to_end_and_leaves_nothing_behind() -> None:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "localaws.demo", "--tasks", "2", "--size", "32"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        start_new_session=True,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert out.count(": SUCCEEDED after 1 attempt(s)") == 3  # two matmul tasks and the file's digest
    assert out.count("result.json: {") == 3
    assert "downloaded into" in out and "result.json says:" in out  # the file in, the task's results out
    assert "[gpu host] bootstrap.sh installed:" in out and "[gpu host] install.sh installed s3://" in out
    assert "lambda decision: STOP" in out
    assert "instance states seen: stopped -> running -> " in out and "adapter stopped: True" in out
    assert not demo_processes(), "the demo left processes behind"


def demo_processes() -> list[int]:
    """PIDs of processes still carrying the demo adapter's marker in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"WORKER_ID=demo-gpu\0" in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
