"""`gpuq` end to end, as real processes (`python -m orchestrator`, the same entry point as the console script)
against the service under uvicorn on 127.0.0.1 and moto's S3: upload an input, submit, wait, download the results;
results, logs, types, list; configure from Terraform outputs; progress bars only on a terminal; and the package
build that makes the `gpuq` command."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from core.store import TaskStore
from core.tasks import TaskStatus
from orchestrator.app import create_app
from orchestrator.server import serve_in_thread
from orchestrator.settings import Clients, Settings

TOKEN = "gpuq-test-token-abcdef"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def service(local_aws: Any, controller: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The service with S3; yields the environment a gpuq process needs (its own, empty config file path)."""
    settings = Settings.from_env({**local_aws.env(), "ORCHESTRATOR_TOKEN": TOKEN})
    table = local_aws.resource("dynamodb").Table(local_aws.table_name)
    s3 = local_aws.client("s3", config=Config(signature_version="s3v4"))
    clients = Clients(
        sqs=local_aws.client("sqs"), ec2=local_aws.client("ec2"), lambda_=controller.client, table=table, s3=s3
    )
    with serve_in_thread(create_app(settings, clients)) as url:
        yield {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "ORCHESTRATOR_URL": url,
            "ORCHESTRATOR_TOKEN": TOKEN,
            "GPUQ_CONFIG": str(tmp_path / "gpuq" / "config.toml"),
        }


def gpuq(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def digest_worker(local_aws: Any) -> Iterator[None]:
    """A stand-in GPU worker for `digest`: takes each message, reads the input from S3, keeps result.json and a
    stdout log under results/<id>/ as the adapter does, and finishes the task SUCCEEDED."""
    sqs, s3 = local_aws.client("sqs"), local_aws.client("s3")
    tasks = TaskStore(local_aws.resource("dynamodb").Table(local_aws.table_name))
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            for msg in sqs.receive_message(QueueUrl=local_aws.queue_url, WaitTimeSeconds=0).get("Messages", []):
                task_id = json.loads(msg["Body"])["task_id"]
                held = tasks.claim(task_id, worker="gpu-1", stale_after_ms=60_000).held
                data = s3.get_object(Bucket=local_aws.bucket, Key=held.params["input"])["Body"].read()
                result = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                prefix = f"results/{task_id}/"
                s3.put_object(Bucket=local_aws.bucket, Key=prefix + "result.json", Body=json.dumps(result).encode())
                s3.put_object(Bucket=local_aws.bucket, Key=prefix + "stdout.txt", Body=b"digest done\n")
                tasks.finish(held, TaskStatus.SUCCEEDED, result_uri=f"s3://{local_aws.bucket}/{prefix}")
                sqs.delete_message(QueueUrl=local_aws.queue_url, ReceiptHandle=msg["ReceiptHandle"])
            stop.wait(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.usefixtures("digest_worker")
def test_submit_uploads_the_input_waits_and_downloads_the_results(service: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "in put.txt"
    data.write_bytes(b"one\ntwo\n" * 1000)
    out = tmp_path / "out"
    args = ["submit", "digest", "--input", f"input={data}", "--wait", "--download", str(out), "--interval", "0.05"]
    done = gpuq(service, *args)
    assert done.returncode == 0, done.stderr
    assert "status: SUCCEEDED" in done.stdout
    assert (
        "uploaded" in done.stderr and "/in_put.txt" in done.stderr and f"downloaded 2 file(s) to {out}" in done.stderr
    )
    assert "\r" not in done.stderr and "%|" not in done.stderr  # no bars when stderr is not a terminal
    result = json.loads((out / "result.json").read_text())
    assert result == {"sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "bytes": data.stat().st_size}
    assert (out / "stdout.txt").read_text() == "digest done\n"
    assert not list(out.rglob("*.part"))
    task_id = done.stdout.split("task_id: ", 1)[1].split()[0]

    listed = gpuq(service, "results", task_id)
    assert listed.returncode == 0 and sorted(line.split()[0] for line in listed.stdout.splitlines()) == [
        "result.json",
        "stdout.txt",
    ]
    as_json = json.loads(gpuq(service, "results", task_id, "--json").stdout)
    assert all(o["url"].startswith("http") for o in as_json["objects"])
    again = tmp_path / "again"
    assert gpuq(service, "results", task_id, "--download", str(again)).returncode == 0
    assert (again / "result.json").read_bytes() == (out / "result.json").read_bytes()

    logs = gpuq(service, "logs", task_id)
    assert logs.returncode == 0 and "== stdout (12 bytes)\ndigest done\n" in logs.stdout
    assert "== stderr: none" in logs.stdout

    # a missing input file, or one named twice, is refused before anything is sent
    missing = gpuq(service, "submit", "digest", "--input", f"input={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    twice = gpuq(service, "submit", "digest", "-p", "input=inputs/x", "--input", f"input={data}")
    assert twice.returncode == 2 and "both" in twice.stderr


def test_types_list_every_status_cancel_and_status(service: dict[str, str], local_aws: Any) -> None:
    types = gpuq(service, "types")
    assert types.returncode == 0, types.stderr
    assert "digest: " in types.stdout and "--input input=FILE" in types.stdout and "-p size=..." in types.stdout
    assert {t["name"] for t in json.loads(gpuq(service, "types", "--json").stdout)["types"]} >= {"digest", "noop"}

    tasks = TaskStore(local_aws.resource("dynamodb").Table(local_aws.table_name))
    queued = json.loads(gpuq(service, "submit", "noop", "--json").stdout)["task_id"]
    running = tasks.create(task_type="noop", params={}).task_id
    tasks.claim(running, worker="gpu-1", stale_after_ms=60_000)
    listed = gpuq(service, "list")  # no --status: every status
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()}
    assert rows == {queued: "QUEUED", running: "RUNNING"}
    assert gpuq(service, "list", "--cursor", "x").returncode == 2  # a cursor continues one status
    cancelled = gpuq(service, "cancel", queued)
    assert cancelled.returncode == 0 and "status: CANCELLED" in cancelled.stdout
    shown = gpuq(service, "status", queued)
    assert "submitted_by: local" in shown.stdout


def fake_terraform(bin_dir: Path, outputs: dict[str, Any], exit_code: int = 0) -> Path:
    """A `terraform` on PATH that records its arguments and prints `outputs` as `output -json` would."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "terraform"
    doc = json.dumps({k: {"value": v, "type": "string", "sensitive": False} for k, v in outputs.items()})
    script.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(bin_dir / 'args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        f"print({doc!r})\nsys.stderr.write('Error: no state\\n')\nsys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return bin_dir


def test_configure_reads_the_api_stack_outputs_and_says_what_it_could_not_find(
    service: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "checkout"
    stack = project / "cdktf.out" / "dev" / "stacks" / "gpu-orchestrator-api"
    stack.mkdir(parents=True)
    function_url = "https://abcdefghij0123456789.lambda-url.eu-west-1.on.aws/"
    admin_url = "https://klmnopqrst0123456789.lambda-url.eu-west-1.on.aws/"
    outputs = {"ApiFunctionName": "gpu-orchestrator-api-dev", "ApiUrl": function_url, "AdminApiUrl": admin_url}
    bin_dir = fake_terraform(tmp_path / "bin", outputs)
    env = {**service, "PATH": f"{bin_dir}:{service['PATH']}"}
    done = gpuq(env, "configure", "--env", "dev", "--project", str(project))
    assert done.returncode == 0, done.stderr
    assert (bin_dir / "args").read_text() == f"-chdir={stack} output -json"
    config = tomllib.loads(Path(service["GPUQ_CONFIG"]).read_text())
    assert config == {"url": function_url, "auth": "iam", "region": "eu-west-1", "environment": "dev"}
    assert "auth=iam" in done.stdout
    admin = gpuq(env, "configure", "--env", "dev", "--project", str(project), "--admin")
    assert admin.returncode == 0, admin.stderr
    assert tomllib.loads(Path(service["GPUQ_CONFIG"]).read_text())["url"] == admin_url

    # what it could not find, in one line each, and what to do instead
    no_tf = {**service, "PATH": str(tmp_path / "empty")}
    for env_, args, needle in (
        (no_tf, ["--env", "dev", "--project", str(project)], "terraform is not on PATH"),
        (env, ["--env", "staging", "--project", str(project)], "no synthesized gpu-orchestrator-api"),
    ):
        failed = gpuq(env_, "configure", *args)
        assert failed.returncode == 2 and needle in failed.stderr, failed.stderr
        assert len(failed.stderr.splitlines()) == 1 and "pass --url URL" in failed.stderr
    named = gpuq(env, "configure", "--env", "../x", "--url", service["ORCHESTRATOR_URL"])
    assert named.returncode == 2 and "not an environment name" in named.stderr
    broken = fake_terraform(tmp_path / "bin2", {}, exit_code=1)
    failed = gpuq(
        {**service, "PATH": f"{broken}:{service['PATH']}"}, "configure", "--env", "dev", "--project", str(project)
    )
    assert failed.returncode == 2 and "Error: no state" in failed.stderr and len(failed.stderr.splitlines()) == 1
    nourl = fake_terraform(tmp_path / "bin3", {"FunctionName": "x"})
    failed = gpuq(
        {**service, "PATH": f"{nourl}:{service['PATH']}"}, "configure", "--env", "dev", "--project", str(project)
    )
    assert failed.returncode == 2 and "no URL output ApiUrl" in failed.stderr

    # --url needs no terraform; the written config is then what gpuq uses when nothing overrides it
    local = gpuq(no_tf, "configure", "--env", "dev", "--url", service["ORCHESTRATOR_URL"])
    assert local.returncode == 0, local.stderr
    assert tomllib.loads(Path(service["GPUQ_CONFIG"]).read_text())["auth"] == "token"
    without_url = {k: v for k, v in service.items() if k != "ORCHESTRATOR_URL"}
    submitted = gpuq(without_url, "submit", "noop", "--json")
    assert submitted.returncode == 0, submitted.stderr


def read_pty(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.usefixtures("digest_worker")
def test_progress_bars_are_drawn_on_a_terminal(service: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(300_000))
    primary, secondary = pty.openpty()
    # a new pty is 0 columns wide, in which tqdm has no room to draw: give it a terminal's size
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", "digest", "--input", f"input={data}", "--wait"]
        + ["--download", str(tmp_path / "out"), "--interval", "0.05"],
        env=service,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    try:
        drawn = read_pty(primary)
        proc.wait(60)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, drawn
    text = drawn.decode(errors="replace")
    assert "big.bin: 100%" in text and "result.json" in text  # the upload's bar and a download's
    assert "SUCCEEDED attempts=1 elapsed=" in text  # the wait's live line


def test_the_package_builds_with_the_gpuq_console_script(tmp_path: Path) -> None:
    """What `pip install .` builds (from a copy: the build leaves build/ and *.egg-info beside the sources)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("core", "orchestrator"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("gpu_orchestrator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "gpuq = orchestrator.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert {"core/task_types.json", "orchestrator/cli.py", "orchestrator/lambda_handler.py"} <= set(names)
    assert {n.split("/")[0] for n in names if not n.startswith("gpu_orchestrator-")} == {"core", "orchestrator"}
