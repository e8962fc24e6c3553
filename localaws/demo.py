"""`make local`: the whole system on this machine, as a new user first meets it.

Synthesizes the `local` environment, builds a local AWS from it (moto on 127.0.0.1), starts the orchestrator, and
emulates the GPU instance: when the orchestrator starts the (moto) instance, an adapter process "boots" on it; when
the instance stops, the adapter gets SIGTERM like systemd would send it. Then it submits tasks through the CLI,
shows their results in S3, lets the shutdown Lambda find the system idle and stop the instance, prints where
everything was, and stops everything it started.

    python -m localaws.demo [--tasks 3] [--size 96] [--idle-seconds 5] [--keep-running]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 600  # the whole demo, whatever happens: nothing it starts outlives this


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class EmulatedInstance:
    """Stands in for the GPU box: runs `python -m adapter` while the moto instance is running, SIGTERMs it when the
    instance stops (as systemd does at shutdown), and reports what it saw."""

    def __init__(self, ec2: Any, instance_id: str, env: dict[str, str], log_path: Path) -> None:
        self.ec2, self.instance_id, self.env, self.log_path = ec2, instance_id, env, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.states: list[str] = []
        self.boots = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="emulated-gpu", daemon=True)

    def state(self) -> str:
        reservation = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]
        return str(reservation["Instances"][0]["State"]["Name"])

    def start(self) -> None:
        self.states.append(self.state())  # before anyone can start it: the demo shows the GPU starting from stopped
        print(f"   [gpu {self.instance_id}] {self.states[0]}", flush=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            state = self.state()
            if not self.states or self.states[-1] != state:
                self.states.append(state)
                print(f"   [gpu {self.instance_id}] {state}", flush=True)
            if state == "running" and self.process is None:
                self.boots += 1
                log = self.log_path.open("ab")
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "adapter"],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            elif state in ("stopping", "stopped") and self.process is not None:
                self._terminate()

    def _terminate(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._terminate()


def cli(url: str, token: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHESTRATOR_URL": url, "ORCHESTRATOR_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        env=env,
        text=True,
        timeout=timeout,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def run(args: argparse.Namespace) -> int:
    """The six steps, in order; everything started is stopped when the block ends, whatever happens."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    work = ROOT / "build" / "demo"  # logs of the last run stay here (gitignored)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    outdir = synthesize_local()
    with ExitStack() as stack:
        local = start_local_aws(stack, outdir)
        url, token, gpu = start_services(stack, local, work)
        results = submit_tasks(url, token, args.tasks, args.size)
        if results is None:
            return 1
        show_results(local, results)
        if not shut_down_when_idle(local, gpu, args.idle_seconds, work):
            return 1
        say("done: every task SUCCEEDED with its results in S3, and the idle GPU was stopped")
        print(
            f"   synthesized stacks: {outdir / 'stacks'}\n   logs (JSON lines): {work / 'adapter.log'}, "
            f"{work / 'lambda.log'}\n"
            "   (moto, the orchestrator and the adapter are stopped now; run `make local` again any time)"
        )
        if args.keep_running:
            print("   --keep-running: press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(DEADLINE_S)
    return 0


def synthesize_local() -> Path:
    from scripts.synth import synthesize

    outdir = ROOT / "cdktf.out" / "local"
    say("1/6 synthesizing the `local` environment (cdktf)")
    synthesize("local", outdir)
    print(f"   stacks: {outdir / 'stacks'}")
    return outdir


def start_local_aws(stack: ExitStack, outdir: Path) -> Any:
    """moto on 127.0.0.1 holding every resource of the synthesized stacks (localaws.LocalAws)."""
    import localaws
    from localaws.server import moto_server

    endpoint = stack.enter_context(moto_server())
    say(f"2/6 building the local AWS from the synthesized stacks (moto at {endpoint})")
    local = localaws.build(outdir, endpoint)
    print(
        f"   queue {local.queue_url}\n   table {local.table_name}\n   bucket {local.bucket}\n"
        f"   GPU instance {local.instance_ids[0]} (stands in for {next(iter(local.instance_id_map))}), stopped"
    )
    return local


def start_services(stack: ExitStack, local: Any, work: Path) -> tuple[str, str, EmulatedInstance]:
    """The orchestrator (in a thread, bearer token on) and the emulated GPU instance; their URL, token and GPU."""
    from orchestrator.app import create_app
    from orchestrator.server import serve_in_thread
    from orchestrator.settings import Clients, Settings

    say("3/6 starting the orchestrator and the emulated GPU instance")
    token = secrets.token_urlsafe(24)
    settings = Settings.from_env({**local.env(), "ORCHESTRATOR_TOKEN": token})
    clients = Clients(
        sqs=local.client("sqs"), ec2=local.client("ec2"), table=local.resource("dynamodb").Table(local.table_name)
    )
    url = stack.enter_context(serve_in_thread(create_app(settings, clients)))
    print(f"   orchestrator {url} (bearer token required; OpenAPI at {url}/docs)")
    adapter_env = {
        **os.environ,
        **local.adapter_env(work / "adapter"),
        "PYTHONPATH": str(ROOT),
        "WAIT_TIME_SECONDS": "1",
        "HEARTBEAT_SECONDS": "2",
        "WORKER_ID": "demo-gpu",
        # The instance's own autostop powers the OS off; here the Lambda shows the idle stop instead.
        "IDLE_WINDOW_SECONDS": "0",
    }
    gpu = EmulatedInstance(local.client("ec2"), local.instance_ids[0], adapter_env, work / "adapter.log")
    gpu.start()
    stack.callback(gpu.close)
    return url, token, gpu


def submit_tasks(url: str, token: str, count: int, size: int) -> list[dict[str, Any]] | None:
    """`count` matmul tasks through the CLI, each waited for; their final views, or None if one did not succeed."""
    say(f"4/6 submitting {count} matmul task(s) with the CLI (python -m orchestrator submit ... --wait)")
    results: list[dict[str, Any]] = []
    for n in range(count):
        argv = ["submit", "matmul", "-p", f"size={size}", "-p", "repeat=2", "--wait", "--interval", "0.5", "--json"]
        done = cli(url, token, *argv)
        lines = done.stdout.strip().splitlines()
        for line in lines[:-1]:
            print(f"   {line}")
        if done.returncode != 0:
            print(f"   task {n + 1} did not succeed (exit {done.returncode}):\n{done.stdout}")
            return None
        task = json.loads(lines[-1])
        results.append(task)
        print(f"   task {task['task_id']}: {task['status']} after {task.get('attempts')} attempt(s)")
    return results


def show_results(local: Any, results: list[dict[str, Any]]) -> None:
    say("5/6 results in S3")
    s3 = local.client("s3")
    for task in results:
        prefix = f"results/{task['task_id']}/"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local.bucket, Prefix=prefix).get("Contents", [])]
        body = json.loads(s3.get_object(Bucket=local.bucket, Key=prefix + "result.json")["Body"].read())
        print(f"   {task['result_uri']}  {sorted(k.removeprefix(prefix) for k in keys)}")
        print(f"     result.json: {json.dumps(body, sort_keys=True)[:200]}")


def shut_down_when_idle(local: Any, gpu: EmulatedInstance, idle_seconds: float, work: Path) -> bool:
    """The shutdown Lambda stops the idle instance, and the emulated GPU's adapter goes with it."""
    say(
        f"6/6 idle shutdown: the shutdown Lambda, idle window shrunk to {idle_seconds} s for the demo "
        f"(this environment's is {local.idle_window_seconds} s)"
    )
    stopped = idle_shutdown(local, idle_seconds, work / "lambda.log")
    deadline = time.monotonic() + 30
    while gpu.process is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    print(
        f"   instance states seen: {' -> '.join(gpu.states)}; adapter boots: {gpu.boots}; "
        f"adapter stopped: {gpu.process is None}"
    )
    return stopped and gpu.process is None


def idle_shutdown(local: Any, idle_seconds: float, log_path: Path) -> bool:
    import logging

    from core.logs import JsonFormatter
    from core.observe import Sources
    from functions.shutdown.handler import ShutdownSettings
    from functions.shutdown.handler import run as decide_and_act

    env = {**local.lambda_env, "IDLE_WINDOW_SECONDS": str(idle_seconds), "MIN_UPTIME_SECONDS": "0"}
    config = ShutdownSettings.from_env(env)
    # Its one JSON line per run goes to the log file, as the Lambda's would go to CloudWatch.
    decisions = logging.FileHandler(log_path)
    decisions.setFormatter(JsonFormatter())
    logging.getLogger("shutdown").addHandler(decisions)
    logging.getLogger("shutdown").setLevel(logging.INFO)
    src = Sources(
        sqs=local.client("sqs"),
        dynamodb=local.client("dynamodb"),
        ec2=local.client("ec2"),
        queue_url=config.queue_url,
        table_name=config.table_name,
        status_index=config.status_index,
        instance_ids=config.instance_ids,
    )
    deadline = time.monotonic() + idle_seconds + 60
    while time.monotonic() < deadline:
        record = decide_and_act(config, src, trigger="demo")
        decision = record["decision"]
        print(f"   lambda decision: {decision['action']} ({decision['reason']})", flush=True)
        if decision["action"] == "STOP":
            return True
        time.sleep(max(1.0, idle_seconds / 3))
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole system locally against an emulated AWS.")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--size", type=int, default=96, help="matrix size of each matmul task")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--keep-running", action="store_true")
    args = parser.parse_args(argv)
    # A hard bound on the whole run: whatever hangs, the process (and everything it started) goes away.
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("demo took too long")))
    signal.alarm(DEADLINE_S + (DEADLINE_S if args.keep_running else 0))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
