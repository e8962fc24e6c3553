"""Job processes: how the runner starts, watches and stops a command without a shell or a full fork, as which user,
and whether that user is kept away from the instance metadata service."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# The instance metadata service (IPv4, and IPv6 on Nitro instances): it hands out the instance role's credentials
# to any process that asks, so the job user must not reach it. install.sh adds these rules; the adapter checks them.
METADATA_ADDRESSES = (("iptables", "169.254.169.254"), ("ip6tables", "fd00:ec2::254"))


@dataclass(frozen=True)
class JobUser:
    """The unprivileged account jobs run as (the JOB_USER setting)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """The account named `name` (or with that numeric uid); LookupError if there is none."""
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise LookupError(f"no user {name!r} on this host") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def is_self(self) -> bool:
        return (self.uid, self.gid) == (os.geteuid(), os.getegid())


def death_signal_prefix(user: JobUser | None = None) -> list[str]:
    """argv prefix that makes the job die (SIGKILL) when the adapter dies, so a crashed adapter leaves no GPU job
    behind: util-linux's `setpriv --pdeathsig` (>= 2.33), which survives the exec into the job. Cheaper than a
    Popen preexec_fn, which forces a full fork of this (boto3-sized) process per task. Where setpriv lacks the flag,
    systemd's cgroup kill on restart is the only cleanup.

    With a `user` other than our own, the same setpriv also switches to it (`--reuid/--regid/--init-groups`, applied
    before the death signal is set, so the switch does not clear it); `user_switch` covers a host without setpriv."""
    path = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if path is None:
        return []
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    prefix = [path]
    if user is not None and not user.is_self() and "--reuid" in usage:
        prefix += ["--reuid", str(user.uid), "--regid", str(user.gid), "--init-groups"]
    if "--pdeathsig" in usage:
        prefix += ["--pdeathsig", "KILL"]
    return [*prefix, "--"] if len(prefix) > 1 else []


def user_switch(user: JobUser | None, prefix: list[str]) -> dict[str, Any]:
    """Popen arguments that start the job as `user` where `prefix` (death_signal_prefix) does not switch already.
    Popen then forks in full instead of vfork (a cost per task), so this is the fallback, not the way."""
    if user is None or user.is_self() or "--reuid" in prefix:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}


def metadata_block_rule(user: JobUser, address: str) -> list[str]:
    """The OUTPUT rule (without -C/-I) that rejects `user`'s packets to `address`; install.sh adds the same."""
    return ["OUTPUT", "-d", address, "-m", "owner", "--uid-owner", user.name, "-j", "REJECT"]


def metadata_block_missing(user: JobUser) -> list[str]:
    """One line per metadata rule that is not in place for `user` (empty: all are): `iptables -C` says whether the
    exact rule exists. It needs root (CAP_NET_ADMIN), as the adapter on the instance is; anywhere else the answer is
    "cannot tell", reported the same way."""
    missing = []
    for tool, address in METADATA_ADDRESSES:
        path = shutil.which(tool)
        if path is None:
            missing.append(f"{tool}: not installed")
            continue
        try:
            done = subprocess.run(
                [path, "-w", "5", "-C", *metadata_block_rule(user, address)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as err:
            missing.append(f"{tool}: {type(err).__name__}: {err}")
            continue
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            missing.append(f"{tool}: {why}")
    return missing


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
