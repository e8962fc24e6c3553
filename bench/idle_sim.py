"""The model behind bench/idle_cost.py: a day of bursty arrivals on one GPU instance, stepped one second at a time.

- floor: starts the moment a task arrives and stops the moment the last task ends (only the boot time is idle), or,
         with `floor_window_s`, exactly that long after it ends (the oracle at a given idle window).
- seed:  the seed's `QueueEmptyFor30Min` alarm (ApproximateNumberOfMessagesVisible == 0 for 6 x 5 min, missing
         data = missing, actions only on a transition into ALARM) invoking a Lambda that stops the instance as is.
- ours:  the adapter's on-node autostop + the `shutdown-gpu-lambda` on a 1-minute schedule, both running the
         project's real code (functions.shutdown.decision, adapter.autostop) against the simulated queue and table.

All policies share the orchestrator's start-on-submit (StartInstances when a task arrives and the instance is
`stopped`; it fails while `stopping`) and the adapter (FIFO, one task at a time, receive within a second).
SQS metric model: one sample per minute while the queue is active, published `delay_s` late; a queue with no
traffic for `inactive_s` publishes nothing, and after it wakes publishes nothing for `wake_delay_s`.
A stop kills the running task (its message comes back at once; the 4th receive sends it to the DLQ: lost).
Billing runs while booting and running, per second. Stdlib only; deterministic for a given workload seed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from adapter.autostop import AutoStop
from core.idle import Action, Observation, Policy, decide, idle_blocker
from core.instances import Instance, InstanceState

DAY = 24 * 3600
MAX_RECEIVES = 3  # the queue's redrive: the 4th receive goes to the DLQ


@dataclass
class Task:
    arrival: int
    duration: int
    receives: int = 0


def small_burst(rng: random.Random) -> int:
    """The single-instance day's burst size: 1 + an exponential of mean 3 (mostly 1-5 tasks)."""
    return 1 + int(rng.expovariate(1 / 3))


def workload(
    seed: int,
    *,
    burst: Callable[[random.Random], int] = small_burst,
    gap_s: float = 90.0,
    day_bursts: int = 9,
    night_bursts: int = 2,
) -> list[Task]:
    """Bursts: most in working hours (07-21), a couple at night (00-06), `gap_s` apart on average within a burst;
    durations mostly short (70%: 1-6 min), some medium (25%: 8-25 min), a few long (5%: 40-150 min). The defaults
    are the single-instance day; bench/fleet_sim.py asks for bigger, denser bursts from the same generator."""
    rng = random.Random(seed)
    starts = [rng.uniform(7, 21) * 3600 for _ in range(day_bursts)]
    starts += [rng.uniform(0, 6) * 3600 for _ in range(night_bursts)]
    tasks: list[Task] = []
    for start in sorted(starts):
        t = start
        for _ in range(burst(rng)):
            t += rng.expovariate(1 / gap_s)
            r = rng.random()
            minutes = rng.uniform(1, 6) if r < 0.7 else rng.uniform(8, 25) if r < 0.95 else rng.uniform(40, 150)
            tasks.append(Task(int(t), int(minutes * 60)))
    return sorted(tasks, key=lambda t: t.arrival)


@dataclass
class Gpu:
    """The instance, its adapter and the queue. States: stopped, booting (billed), running, stopping (not billed)."""

    boot_s: int
    stop_s: int
    inactive_s: int
    state: str = "stopped"
    until: int = 0
    launch_time: float = 0.0
    current: Task | None = None
    ends_at: int = 0
    waiting: deque[Task] = field(default_factory=deque)
    last_finished: float | None = None
    last_activity: int = -7 * 3600  # the queue has been quiet since yesterday evening
    wake_at: int = -DAY
    billed_s: int = 0
    busy_s: int = 0
    wasted_s: int = 0
    kills: int = 0
    lost: int = 0
    done: int = 0
    starts: int = 0
    waits: list[int] = field(default_factory=list)  # arrival -> first receive, per task
    stops_at: list[int] = field(default_factory=list)
    on_ready: Callable[[int], None] | None = None
    on_task_edge: Callable[[], None] | None = None

    def touch(self, now: int) -> None:
        if self.queue_inactive(now):
            self.wake_at = now
        self.last_activity = now

    def queue_inactive(self, now: int) -> bool:
        return now - self.last_activity >= self.inactive_s and not self.waiting and self.current is None

    def start(self, now: int) -> bool:
        if self.state != "stopped":  # StartInstances: no-op when up, IncorrectInstanceState when stopping
            return False
        self.state, self.until, self.launch_time = "booting", now + self.boot_s, float(now)
        self.starts += 1
        return True

    def stop(self, now: int) -> None:
        if self.state not in ("booting", "running"):
            return
        if self.current is not None:  # killed mid-run: the work is lost, the message comes back
            self.kills += 1
            self.wasted_s += now - (self.ends_at - self.current.duration)
            self.waiting.appendleft(self.current)
            self.current = None
        self.state, self.until = "stopping", now + self.stop_s
        self.stops_at.append(now)

    def step(self, now: int) -> None:
        if self.state == "booting" and now >= self.until:
            self.state = "running"
            if self.on_ready:
                self.on_ready(now)
        elif self.state == "stopping" and now >= self.until:
            self.state = "stopped"
        if self.state in ("booting", "running"):
            self.billed_s += 1
        if self.state != "running":
            return
        self.touch(now)  # the adapter long-polls the queue
        if self.current is not None and now >= self.ends_at:
            self.done += 1
            self.last_finished = float(now)
            self.current = None
            if self.on_task_edge:
                self.on_task_edge()
        while self.current is None and self.waiting:
            task = self.waiting.popleft()
            task.receives += 1
            if task.receives == 1:
                self.waits.append(now - task.arrival)
            if task.receives > MAX_RECEIVES:
                self.lost += 1
                continue
            self.current, self.ends_at = task, now + task.duration
            if self.on_task_edge:
                self.on_task_edge()
        if self.current is not None:
            self.busy_s += 1

    def observation(self, now: int) -> Observation:
        """What the Lambda and the autostop read directly: queue counts, table rows, EC2 state."""
        state = {
            "booting": InstanceState.PENDING,
            "running": InstanceState.RUNNING,
            "stopping": InstanceState.STOPPING,
            "stopped": InstanceState.STOPPED,
        }[self.state]
        return Observation(
            now=float(now),
            visible=len(self.waiting),
            in_flight=int(self.current is not None),
            newest_queued_at=float(max(t.arrival for t in self.waiting)) if self.waiting else None,
            running_heartbeat_at=float(now) if self.current is not None else None,
            last_finished_at=self.last_finished,
            instances=(Instance("i-sim", state, self.launch_time),),
        )


class SeedAlarm:
    """QueueEmptyFor30Min over the sampled, delayed, sometimes-missing SQS metric."""

    def __init__(self, delay_s: int, wake_delay_s: int) -> None:
        self.delay_s, self.wake_delay_s = delay_s, wake_delay_s
        self.samples: dict[int, tuple[int, int]] = {}  # minute -> (visible, published at)
        self.state = "INSUFFICIENT_DATA"
        self.fired = 0

    def tick(self, now: int, gpu: Gpu) -> bool:
        """Once a minute: take a sample, evaluate; True on a transition into ALARM (the only time actions run)."""
        if not gpu.queue_inactive(now) and now >= gpu.wake_at + self.wake_delay_s:
            self.samples[now // 60] = (len(gpu.waiting), now + self.delay_s)
        period = now // 300
        points: list[int | None] = []
        for p in range(period - 6, period):
            seen = [
                self.samples[m][0] for m in range(p * 5, p * 5 + 5) if m in self.samples and self.samples[m][1] <= now
            ]
            points.append(max(seen) if seen else None)
        present = [v for v in points if v is not None]
        new = self.state
        if not present:
            new = "INSUFFICIENT_DATA"
        elif any(present):
            new = "OK"
        elif len(present) == len(points):
            new = "ALARM"
        fired = new == "ALARM" and self.state != "ALARM"
        self.state = new
        self.fired += fired
        return fired


@dataclass(frozen=True)
class Params:
    boot_s: int
    stop_s: int
    inactive_s: int
    delay_s: int
    wake_delay_s: int
    policy: Policy
    schedule_s: int = 60  # modules/stacks.py LambdaStack: rate(1 minute)
    poll_s: int = 20  # the adapter's long poll: one idle loop turn
    stopping_wait_s: int = 40
    races: int = 2
    floor_window_s: int = 0  # the floor stops this long after its last task ends (0: the moment it ends)


def simulate(name: str, tasks: list[Task], prm: Params, horizon_s: int) -> Gpu:
    """One policy over the day. The first `prm.races` times this policy's instance enters `stopping`, a 2-minute
    task is submitted 10 s later (failure 4, placed adversarially but by the same rule for every policy)."""
    gpu = Gpu(prm.boot_s, prm.stop_s, prm.inactive_s)
    arrivals = deque(Task(t.arrival, t.duration) for t in tasks)
    races: list[Task] = []
    alarm = SeedAlarm(prm.delay_s, prm.wake_delay_s)
    clock = [0]
    autostop: list[AutoStop] = []
    pending_start = [-1]
    if name == "ours":

        def boot(now: int) -> None:  # the adapter service starts with the OS
            autostop[:] = [
                AutoStop(
                    prm.policy.idle_window_s,
                    clock=lambda: float(clock[0]),
                    checks=lambda: idle_blocker(gpu.observation(clock[0]), prm.policy),
                    poweroff=lambda: gpu.stop(clock[0]),
                )
            ]

        gpu.on_ready = boot
        gpu.on_task_edge = lambda: autostop[0].note_busy() if autostop else None
    for now in range(horizon_s):
        clock[0] = now
        if len(races) < min(prm.races, len(gpu.stops_at)):
            races.append(Task(gpu.stops_at[len(races)] + 10, 120))
            arrivals = deque(sorted([*arrivals, races[-1]], key=lambda t: t.arrival))
        while arrivals and arrivals[0].arrival <= now:
            gpu.waiting.append(arrivals.popleft())
            gpu.touch(now)
            if name != "floor":
                gpu.start(now)  # the orchestrator's start-on-submit
        gpu.step(now)
        if name == "floor":
            idle_since = max(gpu.last_finished or 0.0, gpu.launch_time + prm.boot_s)
            if (
                gpu.state == "running"
                and gpu.current is None
                and not gpu.waiting
                and now - idle_since >= prm.floor_window_s
            ):
                gpu.stop(now)
            elif gpu.state == "stopped" and gpu.waiting:
                gpu.start(now)
        elif name == "seed":
            if now % 60 == 0 and alarm.tick(now, gpu):
                gpu.stop(now)  # the seed's Lambda stops whatever is running
        else:
            if autostop and gpu.state == "running" and gpu.current is None and now % prm.poll_s == 0:
                autostop[0].maybe_stop()
            if now == pending_start[0]:
                gpu.start(now)
            if now % prm.schedule_s == 0:  # shutdown-gpu-lambda on its schedule
                d = decide(gpu.observation(now), prm.policy)
                if d.action == Action.STOP:
                    gpu.stop(now)
                elif d.action == Action.START:
                    gpu.start(now)
                elif d.stopping_ids and gpu.until - now <= prm.stopping_wait_s:
                    pending_start[0] = gpu.until  # waits out `stopping` inside the same invocation
    return gpu
