"""Slots: one task per GPU. An instance with G GPUs runs up to G tasks at once, each in a thread of its own with a
Runner of its own (its work dir, its job's process group) pinned to one GPU; each task keeps its own heartbeat,
cancel and hand-back (worker.py runs the same single-task path in every slot).

G is GPU_SLOTS where it is set, else the number of GPUs `nvidia-smi -L` lists (one line per GPU), else 1: a host
without the tool, or where it fails, is a CPU-only host with one slot, as every host was before slots.

`Slots` also tells the fleet membership when the instance turns busy and idle (`on_busy`): called with True as the
first slot is taken - in the loop's thread, before that slot's task is claimed - and with False as the last busy slot
settles, both under the slots' lock, so the two calls can never cross.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .runner import Runner

NVIDIA_SMI = ("nvidia-smi", "-L")


def gpu_count(command: Sequence[str] = NVIDIA_SMI) -> int:
    """The GPUs `nvidia-smi -L` lists ("GPU 0: NVIDIA A10G (UUID: GPU-...)", one per line); 1 when it is absent,
    fails or lists none."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 1
    if done.returncode != 0:
        return 1
    return max(1, sum(1 for line in done.stdout.splitlines() if line.startswith("GPU ")))


@dataclass
class Slot:
    index: int
    runner: Runner
    thread: threading.Thread | None = None  # the task it runs; None while free

    @property
    def busy(self) -> bool:
        return self.thread is not None


class Slots:
    """A fixed set of slots, one Runner each. Only the loop's thread starts work; a slot frees itself when its work
    returns."""

    def __init__(self, runners: Sequence[Runner], *, on_busy: Callable[[bool], None] | None = None) -> None:
        if not runners:
            raise ValueError("at least one slot")
        self.slots = [Slot(i, runner) for i, runner in enumerate(runners)]
        self.on_busy = on_busy or (lambda busy: None)
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self.slots)

    def busy(self) -> int:
        with self._changed:
            return sum(1 for s in self.slots if s.busy)

    def free(self) -> int:
        return len(self.slots) - self.busy()

    def start(self, work: Callable[[Runner], None], name: str) -> None:
        """Run `work(runner)` in a free slot's thread. The caller checked that one is free."""
        with self._changed:
            slot = next(s for s in self.slots if not s.busy)
            if not any(s.busy for s in self.slots):
                self.on_busy(True)
            slot.thread = threading.Thread(target=self._run, args=(slot, work), name=f"slot-{slot.index}-{name}")
            slot.thread.daemon = True
            slot.thread.start()

    def _run(self, slot: Slot, work: Callable[[Runner], None]) -> None:
        try:
            work(slot.runner)
        finally:
            with self._changed:
                slot.thread = None
                if not any(s.busy for s in self.slots):
                    self.on_busy(False)
                self._changed.notify_all()

    def sync(self) -> None:
        """Tell `on_busy` the current state again (it retries a change that failed; it does nothing otherwise)."""
        with self._changed:
            self.on_busy(any(s.busy for s in self.slots))

    def wait(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until `done()` (read under the lock) or `timeout`; True if done."""
        with self._changed:
            return self._changed.wait_for(done, timeout)

    def wait_free(self, timeout: float | None = None) -> bool:
        return self.wait(lambda: any(not s.busy for s in self.slots), timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.wait(lambda: not any(s.busy for s in self.slots), timeout)

    def pgids(self) -> list[int]:
        """The process groups of the jobs running now (the second SIGTERM kills them)."""
        return [pgid for s in self.slots if (pgid := s.runner.current_pgid) is not None]
