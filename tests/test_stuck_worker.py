"""A stuck worker recovered, end to end on the local AWS (moto on 127.0.0.1, conftest's `local_aws`): a real adapter
installed on an emulated GPU host (localaws/host.py, through its SSM association, as in tests/test_gpu_host.py) claims
a task and then hangs while more work waits; the controller (in-process as Lambda runs it, localaws/lambdas.py)
reboots the instance, which restarts the adapter, and the recovery clears once the work runs. In the variant the
host's path to AWS goes dark (a stalling proxy between the host and moto), so the adapter hangs again after the
reboot: the controller stops the instance, puts its RUNNING task back with a fresh message, starts the other GPU
(the stopped one is quarantined) and another worker runs everything to SUCCEEDED. STUCK_RECOVERIES lines say
Step=reboot, then Step=stop. The pure rule's own table is in tests/test_shutdown_decision.py, fleet mode in
tests/test_controller_fleet.py.

The adapter's timestamps are wall-clock, so the first scenario runs the controller on the wall clock with a short
STUCK_AFTER_SECONDS; the variant, where the hung host never writes again, drives it with an injected clock ahead by
one and two STUCK_AFTER_SECONDS instead of waiting them out. Where the synthesized stacks do not declare the GPU
hosts table yet, the test creates one of the same key schema (core/hosts.py)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.hosts import HostStore
from core.store import TaskStore
from core.tasks import TaskStatus
from functions.shutdown.recovery import stuck_error
from functions.shutdown.stuck import progress_at
from localaws.host import EmulatedHost
from localaws.lambdas import LocalController, Run
from localaws.server import background
from tests._adapter_support import GATE_TYPE, REPO, Gate, children_of, registry_with, store_for, submit, wait_for

T = 4.0  # STUCK_AFTER_SECONDS for these tests
WORKER = "gpu-a"


class StallingProxy:
    """A 127.0.0.1 TCP pass-through to the local AWS. After `stall()` no byte moves either way on any connection,
    open or new, while the sockets stay open: a host whose network path went dark. Closed (every socket, every
    thread joined) by close()."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stalled, self.closed = threading.Event(), threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stall(self) -> None:
        self.stalled.set()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                thread = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self.closed.is_set():
            if self.stalled.is_set():
                self.closed.wait(0.2)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.sockets]:
            sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


class Clock:
    """The controller's clock: the wall clock, ahead by `ahead` seconds."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def hosts_table(aws: Any) -> str:
    """The GPU hosts table: the stacks' own, else one created here with core/hosts.py's key schema."""
    name = aws.lambda_env.get("HOSTS_TABLE_NAME") or "gpu_hosts_test"
    ddb = aws.client("dynamodb")
    if name not in ddb.list_tables()["TableNames"]:
        ddb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "instance_id", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "instance_id", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    return str(name)


class World:
    """The local AWS, its GPU instance A and with `two_gpus` a second one, B (stopped), the hosts table, the task
    store and a gate for the jobs."""

    def __init__(self, aws: Any, tmp: Path, clock: Clock, *, two_gpus: bool) -> None:
        self.aws, self.tmp, self.clock = aws, tmp, clock
        self.ec2 = aws.client("ec2")
        self.a = aws.instance_ids[0]
        (other,) = self.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
        self.b = other["InstanceId"]
        self.ec2.stop_instances(InstanceIds=[self.b])
        self.table = hosts_table(aws)
        self.hosts = HostStore(aws.client("dynamodb"), self.table)
        self.store: TaskStore = store_for(aws)
        self.types = registry_with(tmp / "types.json", GATE_TYPE)
        self.gate = Gate.at(tmp / "gate")
        self.env = {
            "GPU_INSTANCE_IDS": f"{self.a},{self.b}" if two_gpus else self.a,
            "HOSTS_TABLE_NAME": self.table,
            "STUCK_AFTER_SECONDS": f"{T:g}",
            "MIN_UPTIME_SECONDS": "0",
            "STOPPING_WAIT_SECONDS": "0",
        }

    def host(self, endpoint: str) -> EmulatedHost:
        """Host A, its processes talking to AWS at `endpoint`; TimeoutStopSec 3 s (a hung adapter is SIGKILLed)."""
        (association,) = self.aws.of_type("aws_ssm_association").values()
        overrides = {
            "WAIT_TIME_SECONDS": "1",
            "HEARTBEAT_SECONDS": "0.5",
            "WORKER_ID": WORKER,
            "IDLE_WINDOW_SECONDS": "0",
            "STOP_GRACE_SECONDS": "2",
            "TASK_TYPES_FILE": str(self.types),
            "HOSTS_TABLE_NAME": self.table,
            "LIVENESS_SECONDS": "1",
        }
        env = {**self.aws.env(), "AWS_ENDPOINT_URL": endpoint}
        return EmulatedHost(
            self.ec2, self.a, env, self.tmp / "host-a.log", ssm=self.aws.client("ssm"),
            associations=[association], overrides=overrides, stop_timeout_s=3,
        )  # fmt: skip

    def run(self) -> Run:
        """One scheduled run of the controller on `clock`."""
        with LocalController(self.aws, env=self.env, clock=self.clock) as controller:
            controller.scheduled()
            assert controller.drain(60)
        (run,) = controller.runs
        assert run.error is None and run.record is not None, run.error
        return run

    def submit(self) -> str:
        return submit(self.aws, self.store, "gate", self.gate.params())

    def state(self, instance_id: str) -> str:
        (found,) = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
        return str(found["State"]["Name"])

    def running(self, worker: str = WORKER) -> list[Any]:
        return [t for t in self.store.list_by_status(TaskStatus.RUNNING, limit=100).items if t.worker == worker]

    def progress(self) -> float | None:
        return progress_at(self.hosts.liveness([self.a])[self.a], self.running())

    def status(self, task_id: str) -> TaskStatus | None:
        found = self.store.get(task_id)
        return found.status if found else None

    def all_succeed(self, *task_ids: str) -> None:
        def done() -> bool:
            return all(self.status(t) == TaskStatus.SUCCEEDED for t in task_ids)

        wait_for(f"{', '.join(task_ids)} to succeed", done, timeout=60)


def adapter_pid(host: EmulatedHost) -> int | None:
    """The adapter process of the host's unit (the supervisor's child running `-m adapter`), if it runs yet."""
    supervisor = host.process
    for pid in children_of(supervisor) if supervisor else []:
        try:
            if b"-m\0adapter" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def steps(run: Run) -> dict[str, str]:
    assert run.record is not None
    return {s["instance_id"]: s["action"] for s in run.record["stuck"]["steps"]}


def recoveries(run: Run) -> list[tuple[str, float]]:
    return [(m["Step"], m["StuckWorkerRecoveries"]) for m in run.metrics if "Step" in m]


def plain(run: Run) -> dict[str, Any]:
    (found,) = [m for m in run.metrics if "Step" not in m]
    return found


def claimed(world: World) -> str:
    """The controller starts A for a task, and A's adapter claims it; its id."""
    first = world.submit()
    start = world.run()
    assert start.record is not None and start.record["decision"]["instance_ids"] == [world.a]
    wait_for("A's adapter to claim the task", lambda: world.status(first) == TaskStatus.RUNNING, timeout=60)
    world.hosts.seen(world.a, worker=WORKER, at_ms=int(time.time() * 1000))  # the loop's record (core/hosts.py)
    return first


@pytest.fixture
def world(local_aws: Any, tmp_path: Path, request: pytest.FixtureRequest) -> World:
    return World(local_aws, tmp_path, Clock(), two_gpus=getattr(request, "param", False))


@pytest.fixture
def proxy(local_aws: Any) -> Iterator[StallingProxy]:
    found = StallingProxy(local_aws.endpoint_url)
    yield found
    found.close()


@pytest.fixture
def closing() -> Iterator[Callable[[EmulatedHost], EmulatedHost]]:
    started: list[EmulatedHost] = []

    def watch(host: EmulatedHost) -> EmulatedHost:
        started.append(host)
        host.start()
        return host

    yield watch
    for host in started:
        host.close()


def test_a_hung_adapter_is_rebooted_and_the_recovery_clears_once_the_work_runs(world: World, closing: Any) -> None:
    host = closing(world.host(world.aws.endpoint_url))
    first = claimed(world)
    pid = wait_for("the adapter process", lambda: adapter_pid(host))
    os.kill(pid, signal.SIGSTOP)  # hung: no loop turn, no heartbeat, while it holds the task
    second = world.submit()
    wait_for("no progress for T", lambda: time.time() - (world.progress() or 0) >= T + 0.2, timeout=2 * T)

    reboot = world.run()
    assert steps(reboot) == {world.a: "reboot"} and recoveries(reboot) == [("reboot", 1.0)]
    assert world.state(world.a) == "running" and plain(reboot)["InstanceStops"] == 0
    rebooted_at = world.hosts.liveness([world.a])[world.a].rebooted_at
    assert rebooted_at is not None
    # The host reboots: systemd's SIGTERM + SIGCONT lets the adapter hand its task back; the new one takes the work.
    wait_for("the reboot", lambda: host.reboots == 1, timeout=30)
    # (a heartbeat the old one sends while handing back is no progress: the task is QUEUED again right after)
    claimed_again = lambda: any((t.started_at or 0) > rebooted_at for t in world.running())  # noqa: E731
    wait_for("the restarted adapter's claim", claimed_again, timeout=60)

    cleared = world.run()
    assert steps(cleared) == {world.a: "clear"} and recoveries(cleared) == []
    assert world.hosts.liveness([world.a])[world.a].rebooted_at is None
    world.gate.open()
    world.all_succeed(first, second)


@pytest.mark.parametrize("world", [True], indirect=True, ids=["two GPUs"])
def test_an_adapter_that_hangs_again_after_the_reboot_is_stopped_and_its_task_runs_elsewhere(
    world: World, proxy: StallingProxy, closing: Any
) -> None:
    host = closing(world.host(proxy.url))
    first = claimed(world)
    proxy.stall()  # the host's path to AWS goes dark, with the task held
    second = world.submit()
    (held,) = world.running()

    world.clock.ahead = T + 1
    reboot = world.run()
    assert reboot.record is not None and recoveries(reboot) == [("reboot", 1.0)]
    assert steps(reboot) == {world.a: "reboot"}
    assert reboot.record["decision"]["instance_ids"] == [world.b]  # the second task waits: the other GPU starts
    wait_for("the reboot", lambda: host.reboots == 1, timeout=30)  # the adapter cannot hand back: SIGKILLed

    world.clock.ahead = 2 * T + 2
    stop = world.run()
    assert stop.record is not None
    assert steps(stop)[world.a] == "stop" and recoveries(stop) == [("stop", 1.0)]
    assert (plain(stop)["InstanceStops"], plain(stop)["InstanceStarts"]) == (1, 0)
    [done] = stop.record["stuck"]["done"]
    assert [r["task_id"] for r in done["requeued"]] == [first]
    requeued = world.store.get(first)
    assert requeued is not None and requeued.status == TaskStatus.QUEUED and requeued.worker is None
    assert requeued.enqueue_id == done["requeued"][0]["enqueue_id"] != held.enqueue_id
    assert requeued.error == stuck_error(world.a)
    wait_for("A stopped", lambda: world.state(world.a) == "stopped", timeout=30)

    # Three tasks' worth of messages (the fresh one, the second, the dead worker's in flight) for two GPUs: without
    # the quarantine A would be started again; with it, B alone is present and up.
    again = world.run()
    assert again.record is not None and world.state(world.a) == "stopped"
    assert world.a in again.record["stuck"]["quarantined_until"]
    assert again.record["decision"]["action"] == "NONE" and "1 needed, 1 up" in again.record["decision"]["reason"]

    work = world.tmp / "worker-b"
    env = {**world.aws.adapter_env(work), "PYTHONPATH": str(REPO), "WORKER_ID": "gpu-b", "WAIT_TIME_SECONDS": "1"}
    env.update(HEARTBEAT_SECONDS="0.5", IDLE_WINDOW_SECONDS="0", TASK_TYPES_FILE=str(world.types))
    env.pop("HOSTS_TABLE_NAME", None)  # off EC2: no liveness, no metadata service to ask
    world.gate.open()
    with background([sys.executable, "-m", "adapter"], env=env, log_path=world.tmp / "worker-b.log"):
        world.all_succeed(first, second)
    ended = world.store.get(first)
    assert ended is not None and ended.worker == "gpu-b" and ended.attempts == 2
