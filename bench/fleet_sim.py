"""The fleet model behind bench/idle_cost.py: a bursty day on N GPU instances of G slots each, stepped one second at
a time, for three variants sharing one queue model and one adapter model.

- naive: a naive N-instance version of the seed. The orchestrator's start-on-submit starts every stopped instance
         when a task arrives; the 1-minute controller runs core.idle.decide over all N instances at once (its STOP
         stops every instance up `min_uptime_s` once the whole system has been idle for the window since the last
         task anywhere; its START covers an instance that was still `stopping` at a submit). No on-node autostop.
- ours:  fleet mode. An Auto Scaling group with a warm pool of stopped instances (reuse on scale-in). The controller
         runs right after each submit and every minute and sets the desired capacity to core.fleet.decide_fleet's
         `desired`; the group starts warm-pool instances to meet it and scales in only unprotected ones. Each
         instance's adapter holds scale-in protection while any slot runs a task and runs the real
         adapter.autostop.AutoStop (clock injected, `repeat=True` as in fleet mode); when it fires, the adapter
         leaves through the group as adapter/fleet.py does (SetDesiredCapacity(desired - 1)); the group scales in
         an unprotected member by its default termination policy, which runs the termination hook (`leave_s`,
         billed) and returns it to the warm pool (stopping, unbilled).
- floor: the oracle at the same idle window: an instance starts the moment a task arrives and finds no free slot
         anywhere (free slots of instances already starting count; the start is billed), tasks are packed onto the
         fewest instances (the busiest, then the most recently busy), and each instance stops exactly one idle
         window after its last task ends.

Shared: FIFO queue; an instance that is up runs up to G tasks, a receive within a second of a slot freeing; which
of several pollers with free slots gets a message is a seeded draw (SQS hands a message to any waiting long poll),
or the first instance with `receive="first"`. A stop or scale-in of an instance that holds a task kills it (the
message comes back at once; past MAX_RECEIVES it is lost). Billing per second while starting, running and in the
termination hook; not while stopping or stopped. Stdlib only (plus core/ and adapter/); deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from functools import partial

from adapter.autostop import AutoStop
from bench.idle_sim import MAX_RECEIVES, Task, workload
from core.fleet import Fleet, FleetAction, Member, decide_fleet
from core.idle import Action, Observation, Policy, decide, idle_blocker, waiting_reason
from core.instances import Instance, InstanceState

KINDS = ("naive", "ours", "floor")
NODE_CHECKS = ("shared", "waiting")
# Our lifecycle states -> EC2's (for core.idle) and Auto Scaling's (for core.fleet; LifecycleState names from
# https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_Instance.html and the warm pool's Warmed:* states).
EC2_STATE = {
    "starting": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "leaving": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED,
}
ASG_STATE = {
    "starting": "Pending",
    "running": "InService",
    "leaving": "Terminating:Wait",
    "stopping": "Warmed:Pending",
    "stopped": "Warmed:Stopped",
}


BURST_MIN, BURST_MAX, BURST_GAP_S = 5, 20, 60.0


def fleet_workload(
    seed: int,
    *,
    burst_min: int = BURST_MIN,
    burst_max: int = BURST_MAX,
    gap_s: float = BURST_GAP_S,
    bursts: int = 9,
    night: int = 2,
) -> list[Task]:
    """bench/idle_sim.workload's day with bigger, denser bursts: `burst_min`..`burst_max` tasks, `gap_s` apart on
    average (the single-instance day: 1-5 tasks, 90 s apart). A burst of ~12 tasks of ~11 min mean arriving within
    ~12 min wants ~8-12 slots at once: all 4 instances of 2 GPUs, and a queue when it also holds a long task."""
    return workload(
        seed, burst=lambda rng: rng.randint(burst_min, burst_max), gap_s=gap_s, day_bursts=bursts, night_bursts=night
    )


@dataclass(frozen=True)
class FleetParams:
    policy: Policy
    instances: int = 4
    slots: int = 2  # GPUs per instance: tasks it runs at once
    # Warm start, desired capacity raised (or StartInstances) until the adapter polls, billed: ~30 s for a warm-pool
    # instance to leave the pool and serve (AWS at the launch of warm pools: "as low as 30 seconds", reported by
    # InfoQ, 2021-05, https://www.infoq.com/news/2021/05/aws-warm-pools/) + ~15 s for the adapter's unit (the
    # ExecStartPre bundle check, Python start, the first receive; our estimate, not measured). The floor pays it too.
    start_s: int = 45
    stop_s: int = 60  # `stopping` back into the warm pool: not billed, cannot start
    # The termination hook of an idle leaver, billed: the adapter sees Terminating:Wait within METADATA_WATCH_SECONDS
    # (5 s, core/contract.py) and completes the hook at once, having nothing to hand back; + a few s of API calls.
    leave_s: int = 10
    schedule_s: int = 60  # modules/stacks.py LambdaStack: rate(1 minute)
    poll_s: int = 20  # the adapter's long poll: one idle loop turn, one AutoStop.maybe_stop
    stopping_wait_s: int = 40  # naive: the controller waits this long for a `stopping` instance to start it
    node_check: str = "waiting"  # ours: AutoStop's checks: "shared" = core.idle.idle_blocker over the whole queue
    # and table (adapter/autostop.shared_checks); "waiting" = core.idle.waiting_reason alone (other instances'
    # running tasks do not hold this one; they hold scale-in protection on their own instances)
    receive: str = "random"  # which poller with a free slot gets a message: "random" (seeded) or "first"
    autostop: bool = True  # ours: False switches the adapters' AutoStop off (the controller's backstop alone)
    leave: str = "group"  # ours: an idle adapter lowers the desired capacity and the group picks ("group", as
    # adapter/fleet.py does), or it is the one that goes ("self")


@dataclass
class Node:
    name: str
    slots: int
    state: str = "stopped"  # stopped, starting, running, leaving (ours: termination hook), stopping
    until: int = 0
    launch_time: float = 0.0
    running: list[tuple[Task, int]] = field(default_factory=list)  # (task, ends at)
    last_busy: int = 0  # the last task edge, or when the adapter came up
    autostop: AutoStop | None = None
    billed_s: int = 0
    held_s: int = 0  # billed while up with no task for longer than the idle window
    starts: int = 0
    empty: int = 0  # starts that ended without running a task
    took: bool = False  # ran a task since the last start

    @property
    def free(self) -> int:
        return self.slots - len(self.running) if self.state == "running" else 0

    @property
    def up(self) -> bool:
        return self.state in ("starting", "running")

    def start(self, now: int, start_s: int) -> bool:
        if self.state != "stopped":  # StartInstances: no-op when up, IncorrectInstanceState when stopping
            return False
        self.state, self.until, self.launch_time = "starting", now + start_s, float(now)
        self.starts += 1
        self.took = False
        return True


@dataclass
class Day:
    """One variant's run: the instances, the queue and the counters the bench prints."""

    nodes: list[Node]
    queue: deque[Task] = field(default_factory=deque)
    desired: int = 0  # ours: the group's desired capacity
    last_finished: float | None = None
    waits: list[int] = field(default_factory=list)  # arrival -> first receive, per task
    kills: int = 0
    lost: int = 0
    done: int = 0
    scale_ins: int = 0  # ours: the controller's backstop lowered the desired capacity
    leaves: int = 0  # ours: an adapter left through the group

    @property
    def billed_s(self) -> int:
        return sum(n.billed_s for n in self.nodes)

    @property
    def starts(self) -> int:
        return sum(n.starts for n in self.nodes)

    @property
    def held_s(self) -> int:
        return sum(n.held_s for n in self.nodes)

    @property
    def empty(self) -> int:
        return sum(n.empty for n in self.nodes)

    def busy(self) -> int:
        return sum(len(n.running) for n in self.nodes)

    def observation(self, now: int) -> Observation:
        """What the controller and the adapters read directly: queue counts, table rows, EC2 states."""
        busy = self.busy()
        return Observation(
            now=float(now),
            visible=len(self.queue),
            in_flight=busy,
            newest_queued_at=float(max(t.arrival for t in self.queue)) if self.queue else None,
            running_heartbeat_at=float(now) if busy else None,
            last_finished_at=self.last_finished,
            instances=tuple(Instance(n.name, EC2_STATE[n.state], n.launch_time) for n in self.nodes),
        )

    def fleet(self, max_size: int) -> Fleet:
        """The group as DescribeAutoScalingGroups + DescribeWarmPool report it."""
        member = [n for n in self.nodes if n.state in ("starting", "running", "leaving")]
        warm = [n for n in self.nodes if n.state in ("stopping", "stopped")]
        return Fleet(
            "gpu-fleet-sim",
            desired=self.desired,
            min_size=0,
            max_size=max_size,
            members=tuple(Member(n.name, ASG_STATE[n.state], bool(n.running), n.launch_time) for n in member),
            warm=tuple(Member(n.name, ASG_STATE[n.state]) for n in warm),
        )

    def halt(self, node: Node, now: int, then: str, for_s: int) -> None:
        """The instance stops (or leaves): whatever it runs is killed and its message comes back at once."""
        for task, _ in reversed(node.running):
            self.kills += 1
            self.queue.appendleft(task)
        node.running.clear()
        node.autostop = None
        node.empty += not node.took
        node.state, node.until = then, now + for_s


def simulate(kind: str, tasks: list[Task], prm: FleetParams, horizon_s: int, seed: int = 0) -> Day:
    """One variant over the day (see the module docstring)."""
    if (
        kind not in KINDS
        or prm.node_check not in NODE_CHECKS
        or prm.receive not in ("random", "first")
        or prm.leave not in ("group", "self")
    ):
        raise ValueError(f"unknown variant {kind!r} or FleetParams choice in {prm}")
    sim = _Sim(kind, prm, seed)
    arrivals = deque(Task(t.arrival, t.duration) for t in tasks)
    for now in range(horizon_s):
        sim.now = now
        submitted = False
        while arrivals and arrivals[0].arrival <= now:
            sim.day.queue.append(arrivals.popleft())
            submitted = True
        sim.step(submitted)
    return sim.day


class _Sim:
    def __init__(self, kind: str, prm: FleetParams, seed: int) -> None:
        self.kind, self.prm, self.now = kind, prm, 0
        self.day = Day([Node(f"i-{n:017x}", prm.slots) for n in range(prm.instances)])
        self.draw = random.Random(seed)  # which poller a message goes to
        self.pending_start: dict[str, int] = {}  # naive: start this stopping instance once it has stopped

    def step(self, submitted: bool) -> None:
        """One second: submits' starts, instance transitions and completions, receives, the control loop, billing."""
        day, prm, now = self.day, self.prm, self.now
        if submitted and self.kind == "naive":
            for node in day.nodes:  # start-on-submit of every stopped instance
                node.start(now, prm.start_s)
        for node in day.nodes:
            self.advance(node)
        self.receive()
        if self.kind == "floor":
            self.floor_capacity()
        elif self.kind == "naive":
            if now % prm.schedule_s == 0 or now in self.pending_start.values():
                self.naive_controller()
        else:
            if submitted or now % prm.schedule_s == 0:  # after each submit (async invoke) and on the schedule
                d = decide_fleet(day.observation(now), prm.policy, day.fleet(prm.instances), slots=prm.slots)
                if d.action != FleetAction.NONE:
                    day.scale_ins += d.action == FleetAction.SCALE_IN
                    day.desired = d.desired
            self.reconcile()
            for node in day.nodes:
                if node.autostop and node.state == "running" and not node.running and now % prm.poll_s == 0:
                    node.autostop.maybe_stop()
        for node in day.nodes:
            if node.state in ("starting", "running", "leaving"):
                node.billed_s += 1
                node.held_s += (
                    node.state == "running" and not node.running and now - node.last_busy > prm.policy.idle_window_s
                )

    def advance(self, node: Node) -> None:
        """State transitions, then task completions, on one instance."""
        now = self.now
        if node.state == "starting" and now >= node.until:
            node.state, node.last_busy = "running", now
            if self.kind == "ours" and self.prm.autostop:  # the adapter service starts with the OS
                node.autostop = AutoStop(
                    self.prm.policy.idle_window_s,
                    clock=lambda: float(self.now),
                    checks=self.node_checks,
                    poweroff=partial(self.leave, node),
                    repeat=True,  # adapter/__main__.py in fleet mode: leave again if the group picked another
                )
        elif node.state == "leaving" and now >= node.until:
            node.state, node.until = "stopping", now + self.prm.stop_s
        elif node.state == "stopping" and now >= node.until:
            node.state = "stopped"
        if node.state != "running":
            return
        for task, ends in [r for r in node.running if r[1] <= now]:
            node.running.remove((task, ends))
            self.day.done += 1
            self.day.last_finished = float(now)
            node.last_busy = now
            if node.autostop:
                node.autostop.note_busy()

    def receive(self) -> None:
        """Instances with free slots take queued tasks, FIFO, one message at a time."""
        day = self.day
        while day.queue:
            ready = [n for n in day.nodes if n.free > 0]
            if not ready:
                return
            if self.kind == "floor":  # packed: the busiest, then the most recently busy
                node = max(ready, key=lambda n: (len(n.running), n.last_busy))
            elif self.prm.receive == "first":
                node = ready[0]
            else:
                node = ready[self.draw.randrange(len(ready))]
            task = day.queue.popleft()
            task.receives += 1
            if task.receives == 1:
                day.waits.append(self.now - task.arrival)
            if task.receives > MAX_RECEIVES:
                day.lost += 1
                continue
            node.running.append((task, self.now + task.duration))
            node.last_busy, node.took = self.now, True
            if node.autostop:
                node.autostop.note_busy()

    def node_checks(self) -> str | None:
        """AutoStop's checks on an instance of ours (FleetParams.node_check)."""
        obs = self.day.observation(self.now)
        if self.prm.node_check == "shared":
            return idle_blocker(obs, self.prm.policy)
        return waiting_reason(obs, self.prm.policy)

    def leave(self, node: Node) -> None:
        """Ours: adapter/fleet.py Membership.leave: protection off, then SetDesiredCapacity(desired - 1) unless at
        MinSize (0); the group then scales in an unprotected member of its choosing (`reconcile`), this one or
        another idle one; with `leave="self"`, this one (as TerminateInstanceInAutoScalingGroup would pick)."""
        if node.state != "running" or self.day.desired <= 0:
            return
        self.day.desired -= 1
        self.day.leaves += 1
        if self.prm.leave == "self":
            self.day.halt(node, self.now, "leaving", self.prm.leave_s)

    def reconcile(self) -> None:
        """Auto Scaling meets the desired capacity: warm starts from the pool's stopped instances, or scale-in of
        unprotected members by the default termination policy (one zone, one launch template: the member closest
        to its next billing hour since launch, ties at random; https://docs.aws.amazon.com/autoscaling/ec2/userguide/
        ec2-auto-scaling-termination-policies.html). A protected member is never picked."""
        day, prm, now = self.day, self.prm, self.now
        active = [n for n in day.nodes if n.up]
        if len(active) < day.desired:
            for node in [n for n in day.nodes if n.state == "stopped"][: day.desired - len(active)]:
                node.start(now, prm.start_s)
        for _ in range(len(active) - day.desired):
            open_ = [n for n in day.nodes if n.up and not n.running]
            if not open_:
                return  # the rest waits for protection to clear
            closest = max((now - n.launch_time) % 3600 for n in open_)
            ties = [n for n in open_ if (now - n.launch_time) % 3600 == closest]
            day.halt(ties[self.draw.randrange(len(ties))], now, "leaving", prm.leave_s)

    def naive_controller(self) -> None:
        """Naive: core.idle.decide over every instance, as the seed's controller would with N instance ids."""
        day, now = self.day, self.now
        for name, at in list(self.pending_start.items()):
            if at <= now:
                del self.pending_start[name]
                next(n for n in day.nodes if n.name == name).start(now, self.prm.start_s)
        d = decide(day.observation(now), self.prm.policy)
        named = [n for n in day.nodes if n.name in d.instance_ids]
        if d.action == Action.STOP:
            for node in named:
                day.halt(node, now, "stopping", self.prm.stop_s)
        elif d.action == Action.START:
            for node in named:
                node.start(now, self.prm.start_s)
        for node in (n for n in day.nodes if n.name in d.stopping_ids):
            if node.until - now <= self.prm.stopping_wait_s:  # waits out `stopping` inside the same invocation
                self.pending_start[node.name] = node.until

    def floor_capacity(self) -> None:
        """The oracle: start what the waiting tasks need beyond the free slots of starting instances; stop each
        instance exactly one idle window after its last task ends."""
        day, prm, now = self.day, self.prm, self.now
        coming = sum(prm.slots for n in day.nodes if n.state == "starting")
        short = len(day.queue) - coming
        if short > 0:
            for node in [n for n in day.nodes if n.state == "stopped"][: math.ceil(short / prm.slots)]:
                node.start(now, prm.start_s)
        for node in day.nodes:
            if node.state == "running" and not node.running and now - node.last_busy >= prm.policy.idle_window_s:
                day.halt(node, now, "stopping", prm.stop_s)


def p95(values: list[int]) -> int:
    """The nearest-rank 95th percentile (0 for none)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)] if ordered else 0
