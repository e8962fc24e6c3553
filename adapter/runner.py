"""One attempt of one task in a private work dir: fetch inputs, run the command (or call the local server), keep
the outputs in S3 under results/<task_id>/.

The runner never decides what happens to the task or its message - it only reports what happened (`Attempt`), and
stops early when `Control` says so (cancel seen by the heartbeat, the task lost to another worker, SIGTERM).

What a job can reach is kept small: it sees only the contract's environment (TASK_ID, INPUT_DIR, OUTPUT_DIR and
c.JOB_PASSED_ENV / c.JOB_PASSED_ENV_PREFIXES from ours: never AWS_*, the queue or table names); with JOB_USER set
(the systemd unit sets gpu-job) it runs as that user, owning only in/ and out/; its outputs are the regular files
under out/, never what a link points to; cleanup removes links, never their targets; and an `http` call never
follows a redirect. The job user's packets to the instance metadata service are rejected by firewall rules that
install.sh adds; the first attempt logs `job_metadata_block_missing` if they are not in place (see
`report_isolation`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
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

from core import contract as c
from core import logs
from core.task_types import TaskType

from .procs import ExitWatch, JobUser, death_signal_prefix, killpg, metadata_block_missing, user_switch
from .workdir import NOFOLLOW, empty, log_file, log_tail, lstat_mode, real_dir, remove

log = logging.getLogger("adapter.runner")

WORKLOADS = str(Path(__file__).with_name("workloads"))
POLL_S = 0.05  # how often a waiting attempt looks at Control: the latency of cancel / stop, not a CPU cost
LOGS = ("stdout.txt", "stderr.txt")


class Control:
    """Why an attempt must stop early. Set from other threads (heartbeat, signal handler, metadata watch); read by
    the runner."""

    def __init__(self, stopping: threading.Event, leaving: threading.Event | None = None) -> None:
        self.stopping = stopping  # the whole worker is shutting down (shared)
        self.leaving = leaving or threading.Event()  # the instance is leaving service (shared): hand back, as a stop
        self.cancelled = threading.Event()  # the task's cancel_requested was seen
        self.lost = threading.Event()  # our attempt is no longer the task's current one (taken over)

    def reason(self) -> str | None:
        if self.lost.is_set():
            return "lost"
        if self.cancelled.is_set():
            return "cancelled"
        if self.stopping.is_set() or self.leaving.is_set():
            return "stopping"
        return None


class AttemptOutcome(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"  # stopped because of Control; `interrupted` says why


@dataclass(frozen=True)
class Attempt:
    outcome: AttemptOutcome
    error: str | None = None
    interrupted: str | None = None
    result_uri: str | None = None
    exit_code: int | None = None
    uploaded: int = 0  # result objects this attempt wrote


class Runner:
    def __init__(
        self,
        *,
        s3: Any,
        bucket: str,
        work_dir: str,
        stop_grace_s: float,
        job_user: str | None = None,
        slot: int | None = None,
        gpu: str | None = None,
    ) -> None:
        """`job_user`: the account jobs run as; None reads JOB_USER from this process's environment (where systemd
        puts it); unset there too, jobs run as the adapter's own user (tests, laptops). Switching to another user
        needs root. A bad value raises SettingError, which `python -m adapter` reports as config_invalid.

        `slot`: this runner's slot on a host of several (its work dir is runner-<pid>-<slot>; None: runner-<pid>).
        `gpu`: the GPU its jobs are pinned to (see `_job_env`); None: jobs see the GPUs the adapter sees."""
        self.s3 = s3
        self.bucket = bucket
        self.work_dir = work_dir
        self.stop_grace_s = stop_grace_s
        self.slot = slot
        self.gpu = gpu
        self.current_pgid: int | None = None  # read by the second-SIGTERM handler to kill the job before exiting
        self.job_user = _job_user(job_user if job_user is not None else c.JOB_USER.read_optional(os.environ))
        self.launcher = death_signal_prefix(self.job_user)
        self._switch = user_switch(self.job_user, self.launcher)
        self._own: Path | None = None
        self._reported = False

    def report_isolation(self) -> None:
        """Once per process: with a job user, say if its firewall rules against the metadata service are missing
        (a job could then fetch the instance role's credentials). Called by the first attempt; the worker may call
        it earlier, at start-up. The rules are checked, not remembered: a flushed firewall shows up here."""
        if self._reported:
            return
        self._reported = True
        if self.job_user is None:
            return
        missing = metadata_block_missing(self.job_user)
        if missing:
            logs.event(log, "job_metadata_block_missing", logging.WARNING, job_user=self.job_user.name, missing=missing)

    def run(self, task_id: str, task_type: TaskType, params: Mapping[str, Any], control: Control) -> Attempt:
        self.report_isolation()
        root = self._root()
        in_dir, out_dir = root / "in", root / "out"
        try:
            try:
                local = self._fetch_inputs(task_type, params, in_dir)
            except Exception as err:  # a missing input fails the attempt; the retry policy decides the rest
                return Attempt(AttemptOutcome.FAILED, error=f"input download failed: {type(err).__name__}: {err}")
            if task_type.kind == "command":
                attempt = self._command(task_id, task_type, local, root, in_dir, out_dir, control)
            else:
                attempt = self._http(task_id, task_type, local, out_dir, control)
            if attempt.outcome is AttemptOutcome.INTERRUPTED:
                return attempt  # cancelled / lost / stopping: the outputs of a cut-short run are not results
            uri, uploaded = self._keep_outputs(task_id, root, out_dir)
            return Attempt(attempt.outcome, attempt.error, None, uri, attempt.exit_code, uploaded)
        finally:
            empty(in_dir, out_dir, *(root / n for n in LOGS))

    def _root(self) -> Path:
        """This process's work dir, with empty in/ and out/. Reused rather than made per task: creating and removing
        directories per task is a measurable share of a short task's cost on some filesystems.

        Each attempt checks that the dir, in/ and out/ are real directories: a job may have replaced one with a link
        or a file, which is removed (the link itself, never what it points to) and made again. With a job user, in/
        and out/ are taken back from it (ours, mode 700) before they are emptied and filled, and handed to it only
        to run the job (`_hand_over`): whatever a previous job left running cannot add to them in between. The dir
        itself and the logs in it stay ours throughout: a job cannot swap them."""
        if self._own is None:
            base = Path(self.work_dir)
            base.mkdir(parents=True, exist_ok=True)
            for stale in base.glob("runner-*"):  # left behind by an adapter that crashed
                pid = stale.name.removeprefix("runner-").split("-")[0]
                if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                    remove(stale)
            self._own = base / (f"runner-{os.getpid()}" if self.slot is None else f"runner-{os.getpid()}-{self.slot}")
        real_dir(self._own)
        if self.job_user is not None:
            self._own.chmod(0o755)  # the job user needs to enter it (its cwd); only we may write in it
        for name in LOGS:
            mode = lstat_mode(self._own / name)
            if mode is not None and not stat.S_ISREG(mode):
                remove(self._own / name)  # a link (or anything else) in a log's place: never written through
        for sub in ("in", "out"):
            path = self._own / sub
            real_dir(path)
            if self.job_user is not None:
                os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
                path.chmod(0o700)  # also undoes a chmod by the previous job
            empty(path)  # normally empty already (each attempt clears up); again, in case that failed
            if any(path.iterdir()):  # never let one task's files become another task's results
                raise RuntimeError(f"work dir {path} is not empty and could not be emptied")
        return self._own

    def _hand_over(self, in_dir: Path, out_dir: Path) -> None:
        """in/ (with the inputs we just downloaded: some jobs work on them in place) and out/ to the job user."""
        assert self.job_user is not None
        uid, gid = self.job_user.uid, self.job_user.gid
        os.chown(out_dir, uid, gid, follow_symlinks=False)
        for _, _subdirs, filenames, dirfd in os.fwalk(in_dir, follow_symlinks=False):
            os.chown(dirfd, uid, gid)
            for name in filenames:
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)

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

    def _keep_outputs(self, task_id: str, root: Path, out_dir: Path) -> tuple[str, int]:
        """Upload the regular files under out/ and the non-empty logs. Walked and opened relative to directory fds
        without following any link (os.fwalk, O_NOFOLLOW), so a link - or a directory a job still running somewhere
        swaps for one - can never make a file outside out/ a result."""
        prefix = f"results/{task_id}/"
        uploaded = 0
        mode = lstat_mode(out_dir)
        if mode is not None and stat.S_ISDIR(mode):  # not when a job replaced out/ itself (with a link, a file...)
            for dirpath, dirnames, filenames, dirfd in os.fwalk(out_dir, follow_symlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    rel = Path(os.path.relpath(os.path.join(dirpath, name), out_dir)).as_posix()
                    uploaded += self._upload(name, dirfd, prefix + rel, skip_empty=False)
        # Empty logs are skipped: nothing to keep, and a no-op task then costs no S3 call.
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        try:
            for name in LOGS:
                uploaded += self._upload(name, root_fd, prefix + name, skip_empty=True)
        finally:
            os.close(root_fd)
        return f"s3://{self.bucket}/{prefix}", uploaded

    def _upload(self, name: str, dirfd: int, key: str, *, skip_empty: bool) -> int:
        """`name` in the directory `dirfd` to `key`, if it is a regular file (not a link, FIFO, device...); 1 if it
        was uploaded, else 0."""
        try:
            if not stat.S_ISREG(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                return 0
            fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dirfd)
        except OSError:  # gone, or a link now: not a result
            return 0
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or (skip_empty and st.st_size == 0):
                return 0
            extra = {"ContentType": "application/json"} if key.endswith(".json") else {"ContentType": "text/plain"}
            self.s3.upload_fileobj(fh, self.bucket, key, ExtraArgs=extra)
            return 1

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
        env = self._job_env(task_id, in_dir, out_dir)
        if self.job_user is not None:
            self._hand_over(in_dir, out_dir)
        deadline = time.monotonic() + task_type.timeout_s
        with log_file(root / LOGS[0]) as out, log_file(root / LOGS[1]) as err:
            try:
                proc = subprocess.Popen(
                    self.launcher + argv,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group: stop/cancel reaches the whole job
                    **self._switch,
                )
            except OSError as spawn_err:
                return Attempt(AttemptOutcome.FAILED, error=f"could not start {argv[0]!r}: {spawn_err}")
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
                        return Attempt(AttemptOutcome.INTERRUPTED, interrupted=reason)
                    if time.monotonic() > deadline:
                        self._stop(proc)
                        return Attempt(AttemptOutcome.FAILED, error=f"timed out after {task_type.timeout_s}s")
            finally:
                exited.close()
                killpg(proc.pid, signal.SIGKILL)  # anything the job left running in its group
                self.current_pgid = None
        if code == 0:
            return Attempt(AttemptOutcome.SUCCEEDED, exit_code=0)
        reason = control.reason()
        if reason is not None:  # e.g. the job got the stop signal itself (systemd) before we noticed ours
            return Attempt(AttemptOutcome.INTERRUPTED, interrupted=reason, exit_code=code)
        tail = log_tail(root / LOGS[1])
        return Attempt(
            AttemptOutcome.FAILED, error=f"exit code {code}: {tail}" if tail else f"exit code {code}", exit_code=code
        )

    def _job_env(self, task_id: str, in_dir: Path, out_dir: Path) -> dict[str, str]:
        """Only what the contract gives a job: none of our credentials, queue, table or bucket names.

        A runner pinned to a GPU sets CUDA_VISIBLE_DEVICES to its index, numbered as nvidia-smi numbers the GPUs
        (CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA's own default order puts the fastest first, which on a host of mixed
        GPUs is not nvidia-smi's, https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#env-vars), and
        NVIDIA_VISIBLE_DEVICES to the same index, which is what the NVIDIA container runtime reads to choose the
        GPUs of a container the job starts with it passed on (`docker run -e NVIDIA_VISIBLE_DEVICES ...`), so a
        containerised job cannot reach its neighbours' GPUs either."""
        env = {k: v for k, v in os.environ.items() if k in c.JOB_PASSED_ENV or k.startswith(c.JOB_PASSED_ENV_PREFIXES)}
        env.setdefault("PATH", os.defpath)
        if self.gpu is not None:
            env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=self.gpu, NVIDIA_VISIBLE_DEVICES=self.gpu)
        if self.job_user is not None:
            env["HOME"] = self.job_user.home
        env.update({c.JOB_TASK_ID: task_id, c.JOB_OUTPUT_DIR: str(out_dir), c.JOB_INPUT_DIR: str(in_dir)})
        return env

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
        # Never via a proxy (it is local), and never to wherever a redirect points: a 3xx is the answer, and fails.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        reply: dict[str, Any] = {}  # what the call thread learned: status + body (+ Location), or error

        def call() -> None:
            try:
                with opener.open(request, timeout=task_type.timeout_s) as resp:
                    reply["status"], reply["body"] = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                reply["status"], reply["body"], reply["location"] = err.code, err.read(), err.headers.get("Location")
            except Exception as err:
                reply["error"] = f"{type(err).__name__}: {err}"

        # A thread, so cancel/stop need not wait for a slow server; an abandoned call ends with its timeout.
        thread = threading.Thread(target=call, name=f"http-{task_id}", daemon=True)
        deadline = time.monotonic() + task_type.timeout_s
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            reason = control.reason()
            if reason is not None and thread.is_alive():
                return Attempt(AttemptOutcome.INTERRUPTED, interrupted=reason)
            if time.monotonic() > deadline and thread.is_alive():
                return Attempt(AttemptOutcome.FAILED, error=f"timed out after {task_type.timeout_s}s")
        if "error" in reply:
            return Attempt(AttemptOutcome.FAILED, error=f"POST {task_type.url} failed: {reply['error']}")
        status, payload = reply["status"], reply["body"]
        if 300 <= status < 400:
            where = reply.get("location")
            return Attempt(
                AttemptOutcome.FAILED,
                error=f"POST {task_type.url}: HTTP {status} redirect to {where!r} refused (never followed)",
            )
        if not 200 <= status < 300:
            text = payload[:1000].decode("utf-8", "replace")
            return Attempt(AttemptOutcome.FAILED, error=f"POST {task_type.url}: HTTP {status}: {text}")
        try:
            json.loads(payload)
            (out_dir / "result.json").write_bytes(payload)
        except ValueError:
            (out_dir / "response.txt").write_bytes(payload)
        return Attempt(AttemptOutcome.SUCCEEDED)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into the HTTPError it is: the local server must answer itself, not send the adapter on
    to another host (the metadata service, say) with the task's params."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _job_user(name: str | None) -> JobUser | None:
    if not name:
        return None
    try:
        user = JobUser.lookup(name)
    except LookupError as err:
        raise c.SettingError(c.JOB_USER.name, str(err)) from None
    if not user.is_self() and os.geteuid() != 0:
        raise c.SettingError(c.JOB_USER.name, f"running jobs as {name!r} needs root; the adapter is uid {os.geteuid()}")
    return user
