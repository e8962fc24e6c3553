"""Job processes: how the runner starts, watches and stops a command without a shell or a full fork."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys


def death_signal_prefix() -> list[str]:
    """argv prefix that makes the job die (SIGKILL) when the adapter dies, so a crashed adapter leaves no GPU job
    behind: util-linux's `setpriv --pdeathsig` (>= 2.33), which survives the exec into the job. Cheaper than a
    Popen preexec_fn, which forces a full fork of this (boto3-sized) process per task. Where setpriv lacks the flag,
    systemd's cgroup kill on restart is the only cleanup."""
    path = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if path is None:
        return []
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [path, "--pdeathsig", "KILL", "--"] if "--pdeathsig" in usage else []


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, sig)


class ExitWatch:
    """`watch(timeout)` -> the exit code, or None if the job still runs after `timeout` seconds. On Linux it blocks
    on a pidfd, so it returns the moment the job exits; Popen.wait(timeout) instead sleeps in growing steps and can
    overshoot a short job's end by milliseconds - a real share of a no-op task's cost."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd_open: not Linux >= 5.3
            self.fd = os.pidfd_open(proc.pid)

    def __call__(self, timeout: float) -> int | None:
        if self.fd is None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return self.proc.wait() if ready else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
