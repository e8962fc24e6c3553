"""One attempt of one task in a private work dir: fetch inputs, run the command (or call the local server), keep
the outputs in S3 under results/<task_id>/.

The runner never decides what happens to the task or its message - it only reports what happened (`Attempt`), and
stops early when `Control` says so (cancel seen by the heartbeat, the task lost to another worker, SIGTERM).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import logs
from .procs import ExitWatch, death_signal_prefix, killpg
from .task_types import TaskType

log = logging.getLogger("adapter.runner")

WORKLOADS = str(Path(__file__).with_name("workloads"))
POLL_S = 0.05  # how often a waiting attempt looks at Control: the latency of cancel / stop, not a CPU cost


class Control:
    """Why an attempt must stop early. Set from other threads (heartbeat, signal handler); read by the runner."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping  # the whole worker is shutting down (shared)
        self.cancelled = threading.Event()  # the task's cancel_requested was seen
        self.lost = threading.Event()  # our attempt is no longer the task's current one (taken over)

    def reason(self) -> str | None:
        if self.lost.is_set():
            return "lost"
        if self.cancelled.is_set():
            return "cancelled"
        if self.stopping.is_set():
            return "stopping"
        return None


class Outcome(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"  # stopped because of Control; `interrupted` says why


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    error: str | None = None
    interrupted: str | None = None
    result_uri: str | None = None
    exit_code: int | None = None


class Runner:
    def __init__(self, *, s3: Any, bucket: str, work_dir: str, stop_grace_s: float) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.work_dir = work_dir
        self.stop_grace_s = stop_grace_s
        self.current_pgid: int | None = None  # read by the second-SIGTERM handler to kill the job before exiting
        self.launcher = death_signal_prefix()
        self._own: Path | None = None

    def run(self, task_id: str, task_type: TaskType, params: Mapping[str, Any], control: Control) -> Attempt:
        root = self._root()
        in_dir, out_dir = root / "in", root / "out"
        try:
            try:
                local = self._fetch_inputs(task_type, params, in_dir)
            except Exception as err:  # a missing input fails the attempt; the retry policy decides the rest
                return Attempt(Outcome.FAILED, error=f"input download failed: {type(err).__name__}: {err}")
            if task_type.kind == "command":
                attempt = self._command(task_id, task_type, local, root, in_dir, out_dir, control)
            else:
                attempt = self._http(task_id, task_type, local, out_dir, control)
            if attempt.outcome is Outcome.INTERRUPTED:
                return attempt  # cancelled / lost / stopping: the outputs of a cut-short run are not results
            uri = self._keep_outputs(task_id, root, out_dir)
            return Attempt(attempt.outcome, attempt.error, None, uri, attempt.exit_code)
        finally:
            _empty(in_dir, out_dir, root / "stdout.txt", root / "stderr.txt")

    def _root(self) -> Path:
        """This process's work dir, with empty in/ and out/. Reused rather than made per task: creating and removing
        directories per task is a measurable share of a short task's cost on some filesystems."""
        if self._own is None:
            base = Path(self.work_dir)
            base.mkdir(parents=True, exist_ok=True)
            for stale in base.glob("runner-*"):  # left behind by an adapter that crashed
                pid = stale.name.removeprefix("runner-")
                if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                    shutil.rmtree(stale, ignore_errors=True)
            self._own = base / f"runner-{os.getpid()}"
        for sub in ("in", "out"):
            path = self._own / sub
            path.mkdir(parents=True, exist_ok=True)
            _empty(path)  # normally empty already (each attempt clears up); again, in case that failed
            if any(path.iterdir()):  # never let one task's files become another task's results
                raise RuntimeError(f"work dir {path} is not empty and could not be emptied")
        return self._own

    # -- inputs / outputs ------------------------------------------------------------------------------------------
    def _fetch_inputs(self, task_type: TaskType, params: Mapping[str, Any], in_dir: Path) -> dict[str, Any]:
        local = dict(params)
        for name in task_type.s3_inputs():
            key = params[name]
            target = in_dir / name / key.rsplit("/", 1)[-1]
            target.parent.mkdir()
            self.s3.download_file(self.bucket, key, str(target))
            local[name] = str(target)
        return local

    def _keep_outputs(self, task_id: str, root: Path, out_dir: Path) -> str:
        prefix = f"results/{task_id}/"
        files = [(p, p.relative_to(out_dir).as_posix()) for p in sorted(out_dir.rglob("*")) if p.is_file()]
        # Empty logs are skipped: nothing to keep, and a no-op task then costs no S3 call.
        files += [
            (root / n, n)
            for n in ("stdout.txt", "stderr.txt")
            if (root / n).is_file() and (root / n).stat().st_size > 0
        ]
        for path, rel in files:
            extra = {"ContentType": "application/json"} if rel.endswith(".json") else {"ContentType": "text/plain"}
            self.s3.upload_file(str(path), self.bucket, prefix + rel, ExtraArgs=extra)
        return f"s3://{self.bucket}/{prefix}"

    # -- command ---------------------------------------------------------------------------------------------------
    def _command(
        self,
        task_id: str,
        task_type: TaskType,
        params: Mapping[str, Any],
        root: Path,
        in_dir: Path,
        out_dir: Path,
        control: Control,
    ) -> Attempt:
        argv = task_type.argv_for(params, {"python": sys.executable, "workloads": WORKLOADS})
        env = dict(os.environ, TASK_ID=task_id, OUTPUT_DIR=str(out_dir), INPUT_DIR=str(in_dir))
        deadline = time.monotonic() + task_type.timeout_s
        with open(root / "stdout.txt", "wb") as out, open(root / "stderr.txt", "wb") as err:
            try:
                proc = subprocess.Popen(
                    self.launcher + argv,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group: stop/cancel reaches the whole job
                )
            except OSError as spawn_err:
                return Attempt(Outcome.FAILED, error=f"could not start {argv[0]!r}: {spawn_err}")
            self.current_pgid = proc.pid
            exited = ExitWatch(proc)
            try:
                while True:
                    code = exited(POLL_S)
                    if code is not None:
                        break
                    reason = control.reason()
                    if reason is not None:
                        logs.event(log, "stopping_job", reason=reason, grace_s=self.stop_grace_s)
                        self._stop(proc)
                        return Attempt(Outcome.INTERRUPTED, interrupted=reason)
                    if time.monotonic() > deadline:
                        self._stop(proc)
                        return Attempt(Outcome.FAILED, error=f"timed out after {task_type.timeout_s}s")
            finally:
                exited.close()
                killpg(proc.pid, signal.SIGKILL)  # anything the job left running in its group
                self.current_pgid = None
        if code == 0:
            return Attempt(Outcome.SUCCEEDED, exit_code=0)
        reason = control.reason()
        if reason is not None:  # e.g. the job got the stop signal itself (systemd) before we noticed ours
            return Attempt(Outcome.INTERRUPTED, interrupted=reason, exit_code=code)
        tail = (root / "stderr.txt").read_bytes()[-1000:].decode("utf-8", "replace").strip()
        return Attempt(
            Outcome.FAILED, error=f"exit code {code}: {tail}" if tail else f"exit code {code}", exit_code=code
        )

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the job's group, give it stop_grace_s to save what it can, then SIGKILL."""
        killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # -- http ------------------------------------------------------------------------------------------------------
    def _http(
        self, task_id: str, task_type: TaskType, params: Mapping[str, Any], out_dir: Path, control: Control
    ) -> Attempt:
        assert task_type.url is not None
        body = json.dumps({"task_id": task_id, "params": dict(params)}).encode()
        request = urllib.request.Request(
            task_type.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy: it is local
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                with opener.open(request, timeout=task_type.timeout_s) as resp:
                    box["status"], box["body"] = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                box["status"], box["body"] = err.code, err.read()
            except Exception as err:
                box["error"] = f"{type(err).__name__}: {err}"

        # A thread, so cancel/stop need not wait for a slow server; an abandoned call ends with its timeout.
        thread = threading.Thread(target=call, name=f"http-{task_id}", daemon=True)
        deadline = time.monotonic() + task_type.timeout_s
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            reason = control.reason()
            if reason is not None and thread.is_alive():
                return Attempt(Outcome.INTERRUPTED, interrupted=reason)
            if time.monotonic() > deadline and thread.is_alive():
                return Attempt(Outcome.FAILED, error=f"timed out after {task_type.timeout_s}s")
        if "error" in box:
            return Attempt(Outcome.FAILED, error=f"POST {task_type.url} failed: {box['error']}")
        status, payload = box["status"], box["body"]
        if not 200 <= status < 300:
            text = payload[:1000].decode("utf-8", "replace")
            return Attempt(Outcome.FAILED, error=f"POST {task_type.url}: HTTP {status}: {text}")
        try:
            json.loads(payload)
            (out_dir / "result.json").write_bytes(payload)
        except ValueError:
            (out_dir / "response.txt").write_bytes(payload)
        return Attempt(Outcome.SUCCEEDED)


def _empty(*paths: Path) -> None:
    """Remove what an attempt left: directories' contents (the directories stay), non-empty files."""
    for path in paths:
        if path.is_dir():
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        elif path.is_file() and path.stat().st_size > 0:  # empty logs are never uploaded: leave them be
            path.unlink()
