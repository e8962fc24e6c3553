"""`make local`: the whole system on this machine, as a new user first meets it.

Synthesizes the `local` environment, builds a local AWS from it (moto on 127.0.0.1), starts the orchestrator (the
API's app, in bearer-token mode) with the controller Lambda it nudges (in-process, localaws.lambdas), and emulates
the GPU host (localaws.host): when the controller starts the (moto) instance, the host boots the way AWS would boot
it, running the bootstrap the stacks gave it (the SSM association's document), which installs the adapter from the
bundle in the local S3 and starts its unit; when the instance stops, the adapter gets SIGTERM like systemd would
send it. Then, with the gpuq CLI, it submits tasks and waits for them, uploads a file, runs a task on it and
downloads what the task wrote; shows the results in S3, lets the controller find the system idle and stop the
instance, prints where everything was, and stops everything it started.

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
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 600  # the whole demo, whatever happens: nothing it starts outlives this


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(url: str, token: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`gpuq ARGS` (the installed console script's module), with the service's URL and token and no config file."""
    env = {**os.environ, "ORCHESTRATOR_URL": url, "ORCHESTRATOR_TOKEN": token, "GPUQ_CONFIG": os.devnull}
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
        for event in boot_events(work / "host.log"):
            print(f"   [gpu host] {event}")
        digested = file_in_and_out(url, token, work)
        if digested is None:
            return 1
        show_results(local, [*results, digested])
        if not shut_down_when_idle(local, gpu, args.idle_seconds, work):
            return 1
        say("done: every task SUCCEEDED with its results in S3 and downloaded, and the idle GPU was stopped")
        print(
            f"   synthesized stacks: {outdir / 'stacks'}\n   logs (JSON lines): {work / 'host.log'} (the GPU host's "
            f"journal), {work / 'lambda.log'}\n"
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
    say("1/7 synthesizing the `local` environment (cdktf)")
    synthesize("local", outdir)
    print(f"   stacks: {outdir / 'stacks'}")
    return outdir


def start_local_aws(stack: ExitStack, outdir: Path) -> Any:
    """moto on 127.0.0.1 holding every resource of the synthesized stacks (localaws.LocalAws)."""
    import localaws
    from localaws.server import moto_server

    endpoint = stack.enter_context(moto_server())
    say(f"2/7 building the local AWS from the synthesized stacks (moto at {endpoint})")
    local = localaws.build(outdir, endpoint)
    print(
        f"   queue {local.queue_url}\n   table {local.table_name}\n   bucket {local.bucket}\n"
        f"   GPU instance {local.instance_ids[0]} (stands in for {next(iter(local.instance_id_map))}), stopped"
    )
    return local


def start_services(stack: ExitStack, local: Any, work: Path) -> tuple[str, str, Any]:
    """The orchestrator (in a thread, bearer token on), the controller it nudges, and the emulated GPU host; their
    URL, token and host."""
    from localaws.host import EmulatedHost
    from localaws.lambdas import LocalController
    from localaws.streams import LocalStreams
    from orchestrator.app import create_app
    from orchestrator.server import serve_in_thread
    from orchestrator.settings import Clients, Settings

    say("3/7 starting the orchestrator, its controller and the emulated GPU host")
    token = secrets.token_urlsafe(24)
    settings = Settings.from_env(
        {**local.env(), "ORCHESTRATOR_TOKEN": token, "HOSTS_TABLE_NAME": local.hosts_table_name}  # gpuq cost
    )
    # The controller's minimum uptime, shrunk like the idle window below: the demo's instance is up for seconds.
    controller = stack.enter_context(LocalController(local, env={"MIN_UPTIME_SECONDS": "0"}))
    clients = Clients(
        sqs=local.client("sqs"),
        ec2=local.client("ec2"),
        lambda_=controller.client,
        table=local.resource("dynamodb").Table(local.table_name),
        dynamodb=local.client("dynamodb"),
        s3=local.client("s3", config=BotoConfig(signature_version="s3v4")),
    )
    url = stack.enter_context(serve_in_thread(create_app(settings, clients)))
    print(f"   orchestrator {url} (bearer token required; OpenAPI at {url}/docs)")
    print(f"   controller {controller.function_name}: invoked asynchronously after each submit")
    # The task-events and webhook functions, fed by their event source mappings as Lambda would (localaws/streams.py).
    streams = LocalStreams.of(local).start(1.0)
    stack.callback(streams.close)
    print(f"   task events: {len(streams.mappings)} event source mappings polled (the table's stream, the webhooks)")
    gpu = EmulatedHost(
        local.client("ec2"),
        local.instance_ids[0],
        local.env(),
        work / "host.log",
        ssm=local.client("ssm"),
        associations=local.of_type("aws_ssm_association").values(),
        # The instance's own autostop powers the OS off; here the controller shows the idle stop instead.
        overrides={
            "WAIT_TIME_SECONDS": "1",
            "HEARTBEAT_SECONDS": "2",
            "WORKER_ID": "demo-gpu",
            "IDLE_WINDOW_SECONDS": "0",
        },
    )
    gpu.start()
    stack.callback(gpu.close)
    print(f"   GPU host {local.instance_ids[0]}: boots through its SSM association's bootstrap (journal: host.log)")
    return url, token, gpu


def submitted(url: str, token: str, argv: list[str], *, what: str) -> dict[str, Any] | None:
    """Run `gpuq submit ... --wait --json` (`argv`), echoing its progress lines; the task's final view (its last
    line), or None if it did not succeed."""
    done = cli(url, token, *argv)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(f"   {line}")
    if done.returncode != 0:
        print(f"   {what} did not succeed (exit {done.returncode}):\n{done.stdout}")
        return None
    task: dict[str, Any] = json.loads(lines[-1])
    return task


def submit_tasks(url: str, token: str, count: int, size: int) -> list[dict[str, Any]] | None:
    """`count` matmul tasks through the CLI, each waited for; their final views, or None if one did not succeed."""
    say(f"4/7 submitting {count} matmul task(s) with the CLI (gpuq submit ... --wait)")
    results: list[dict[str, Any]] = []
    for n in range(count):
        argv = ["submit", "matmul", "-p", f"size={size}", "-p", "repeat=2", "--wait", "--interval", "0.5", "--json"]
        task = submitted(url, token, argv, what=f"task {n + 1}")
        if task is None:
            return None
        results.append(task)
        print(f"   task {task['task_id']}: {task['status']} after {task.get('attempts')} attempt(s)")
    return results


def file_in_and_out(url: str, token: str, work: Path) -> dict[str, Any] | None:
    """A file through the whole loop with one CLI call: upload it (a presigned POST), submit a task naming it, wait
    with progress, download what the task wrote."""
    say("5/7 a file in and out: gpuq submit digest --input input=<file> --wait --download <dir>")
    source = work / "input.txt"
    source.write_text("".join(f"line {n} of the demo's input file\n" for n in range(1, 101)))
    out_dir = work / "downloaded"
    argv = ["submit", "digest", "--input", f"input={source}", "--wait", "--interval", "0.5", "--download", str(out_dir)]
    task = submitted(url, token, [*argv, "--json"], what="the digest task")
    if task is None:
        return None
    result = json.loads((out_dir / "result.json").read_text())
    print(f"   task {task['task_id']}: {task['status']} after {task.get('attempts')} attempt(s)")
    print(f"   downloaded into {out_dir}: {sorted(p.name for p in out_dir.iterdir())}")
    print(f"   result.json says: {json.dumps(result, sort_keys=True)[:200]}")
    return dict(task)


def boot_events(journal: Path) -> list[str]:
    """What the host's own bootstrap did on its first boot, from its journal: the files it installed and the
    release install.sh unpacked from the bundle in S3."""
    shown = []
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "bootstrapped":
            shown.append(f"bootstrap.sh installed: {entry.get('changed', '')}")
        elif entry.get("event") == "installed":
            shown.append(f"install.sh installed {entry.get('bundle', '')}")
    return shown


def show_results(local: Any, results: list[dict[str, Any]]) -> None:
    say("6/7 results in S3")
    s3 = local.client("s3")
    for task in results:
        prefix = f"results/{task['task_id']}/"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local.bucket, Prefix=prefix).get("Contents", [])]
        body = json.loads(s3.get_object(Bucket=local.bucket, Key=prefix + "result.json")["Body"].read())
        print(f"   {task['result_uri']}  {sorted(k.removeprefix(prefix) for k in keys)}")
        print(f"     result.json: {json.dumps(body, sort_keys=True)[:200]}")


def shut_down_when_idle(local: Any, gpu: Any, idle_seconds: float, work: Path) -> bool:
    """The shutdown Lambda stops the idle instance, and the emulated GPU's adapter goes with it."""
    say(
        f"7/7 idle shutdown: the shutdown Lambda, idle window shrunk to {idle_seconds} s for the demo "
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

    # A stuck worker's tasks would be requeued through this store; the run's metric lines go to the same log file.
    def tasks() -> Any:
        from core.store import TaskStore

        return TaskStore(local.resource("dynamodb").Table(config.table_name))

    def metric_lines(line: str) -> None:
        with log_path.open("a") as out:
            out.write(line + "\n")

    deadline = time.monotonic() + idle_seconds + 60
    while time.monotonic() < deadline:
        record = decide_and_act(config, src, trigger="demo", tasks=tasks, metrics=metric_lines)
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
