"""What a job can and cannot reach through the runner: links it leaves in its work dir, redirects from the local
server, the environment and user it runs with, and the start-up report on the metadata firewall rule.

Each test calls the Runner directly with a TaskType of its own against a real S3 bucket in the moto server
(127.0.0.1). Nothing here touches files outside the test's own temporary directories, and the only network traffic
is to 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from adapter import procs
from adapter.runner import AttemptOutcome, Control, Runner
from core import contract as c
from core.task_types import ParamSpec, TaskType

NOBODY = 65534


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[tuple[Any, str]]:
    """A client of the moto server and a bucket of this test's own."""
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"runner-security-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def make_runner(s3: tuple[Any, str], work_dir: Path, **kw: Any) -> Runner:
    client, bucket = s3
    return Runner(s3=client, bucket=bucket, work_dir=str(work_dir), stop_grace_s=5, **kw)


def command(code: str, *, python: str = "{python}", timeout_s: int = 30, s3_input: str | None = None) -> TaskType:
    """A command type running `code` (no `{name}` in it: argv items are templates) with `python`; `s3_input` names
    a param the runner downloads into in/ first."""
    params = {}
    if s3_input is not None:
        params[s3_input] = ParamSpec(s3_input, "string", True, pattern="inputs/.+", s3_input=True)
    return TaskType("t", "command", "test", params, timeout_s, argv=(python, "-c", code))


def run(runner: Runner, task_type: TaskType, params: dict[str, Any] | None = None) -> tuple[str, Any]:
    task_id = uuid.uuid4().hex
    return task_id, runner.run(task_id, task_type, params or {}, Control(threading.Event()))


def uploaded(s3: tuple[Any, str], task_id: str) -> dict[str, bytes]:
    client, bucket = s3
    prefix = f"results/{task_id}/"
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix): client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def outside(tmp_path: Path) -> tuple[Path, Path]:
    """A secret file and a directory with a file, both outside the runner's work dir."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("VICTIM")
    return secret, victim


# -- 7: outputs never follow links ---------------------------------------------------------------------------------
def test_links_left_in_out_are_neither_uploaded_nor_followed(s3: tuple[Any, str], tmp_path: Path) -> None:
    secret, victim = outside(tmp_path)
    code = f"""
import os
out = os.environ['OUTPUT_DIR']
open(os.path.join(out, 'ok.txt'), 'w').write('ok')
os.symlink({str(secret)!r}, os.path.join(out, 'leak.txt'))
os.symlink({str(victim)!r}, os.path.join(out, 'dirlink'))
os.mkdir(os.path.join(out, 'sub'))
os.symlink({str(secret)!r}, os.path.join(out, 'sub', 'deep.txt'))
os.unlink('stdout.txt')  # the runner's log of this job, in the job's cwd
os.symlink({str(secret)!r}, 'stdout.txt')
"""
    task_id, attempt = run(make_runner(s3, tmp_path / "work"), command(code))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    files = uploaded(s3, task_id)
    assert set(files) == {"ok.txt"}
    assert not any(b"SECRET" in body or b"VICTIM" in body for body in files.values())
    assert secret.read_text() == "SECRET" and (victim / "keep.txt").read_text() == "VICTIM"


@pytest.mark.parametrize("replacement", ["link", "file"])
def test_in_and_out_replaced_by_the_job_are_recreated_and_their_targets_kept(
    s3: tuple[Any, str], tmp_path: Path, replacement: str
) -> None:
    secret, victim = outside(tmp_path)
    victim_in = tmp_path / "victim-in"
    victim_in.mkdir()
    (victim_in / "keep.txt").write_text("VICTIM-IN")
    if replacement == "link":
        replace = f"os.symlink({str(victim)!r}, out); os.symlink({str(victim_in)!r}, inp)"
    else:
        replace = "open(out, 'w').write('not a dir'); open(inp, 'w').write('not a dir')"
    code = f"""
import os, shutil
out, inp = os.environ['OUTPUT_DIR'], os.environ['INPUT_DIR']
shutil.rmtree(out)
shutil.rmtree(inp)
{replace}
"""
    runner = make_runner(s3, tmp_path / "work")
    task_id, attempt = run(runner, command(code))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    assert uploaded(s3, task_id) == {}  # nothing of what out/ pointed to
    assert (victim / "keep.txt").read_text() == "VICTIM"  # the cleanup removed the link, not what it points to
    assert (victim_in / "keep.txt").read_text() == "VICTIM-IN"

    # The next attempt gets real, empty directories again.
    check = """
import json, os
out, inp = os.environ['OUTPUT_DIR'], os.environ['INPUT_DIR']
seen = [os.path.islink(p) or not os.path.isdir(p) or bool(os.listdir(p)) for p in (out, inp)]
json.dump(seen, open(os.path.join(out, 'seen.json'), 'w'))
"""
    task_id, attempt = run(runner, command(check))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    assert json.loads(uploaded(s3, task_id)["seen.json"]) == [False, False]
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in victim_in.iterdir()) == ["keep.txt"]


def test_a_log_replaced_by_a_dangling_link_is_never_written_through(s3: tuple[Any, str], tmp_path: Path) -> None:
    _, victim = outside(tmp_path)
    planted = victim / "planted.txt"
    code = f"import os; os.unlink('stderr.txt'); os.symlink({str(planted)!r}, 'stderr.txt')"
    runner = make_runner(s3, tmp_path / "work")
    _, attempt = run(runner, command(code))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    task_id, attempt = run(runner, command("import sys; sys.stderr.write('second'); sys.exit(3)"))
    assert attempt.outcome is AttemptOutcome.FAILED and attempt.error == "exit code 3: second"
    assert uploaded(s3, task_id) == {"stderr.txt": b"second"}
    assert not planted.exists() and not planted.is_symlink()


# -- 8: the http kind never follows a redirect ---------------------------------------------------------------------
@contextmanager
def server(status: int, location: str | None = None) -> Iterator[dict[str, Any]]:
    """An HTTP server on 127.0.0.1 answering every request with `status` (and `location`); records each hit."""
    seen: dict[str, Any] = {"hits": 0}

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a stuck client cannot hold a handler thread for long

        def answer(self) -> None:
            seen["hits"] += 1
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b'{"redirected": false}'
            self.send_response(status)
            if location is not None:
                self.send_header("Location", location)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = answer  # noqa: N815 - http.server's naming

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1/infer"
    try:
        yield seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_fails_the_attempt_and_is_never_followed(s3: tuple[Any, str], tmp_path: Path, status: int) -> None:
    with server(200) as target, server(status, location=target["url"]) as local:
        task_type = TaskType("infer", "http", "test", {}, 5, url=local["url"])
        task_id, attempt = run(make_runner(s3, tmp_path / "work"), task_type)
        assert local["hits"] == 1
        assert target["hits"] == 0  # the redirect's target was never asked
    assert attempt.outcome is AttemptOutcome.FAILED
    assert attempt.error is not None and str(status) in attempt.error and target["url"] in attempt.error
    assert "redirect" in attempt.error
    assert "result.json" not in uploaded(s3, task_id)


# -- 9: the job's environment and user -----------------------------------------------------------------------------
DUMP_ENV = "import json, os; json.dump(dict(os.environ), open(os.path.join(os.environ['OUTPUT_DIR'], 'env.json'), 'w'))"


def test_the_job_sees_only_the_contract_environment(
    s3: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "CUDA_CACHE_PATH": "/var/cache/cuda",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }
    withheld = {
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_SESSION_TOKEN": "t0ken",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds",
        "TASK_QUEUE_URL": "http://127.0.0.1:1/queue",
        "ARTIFACTS_BUCKET": "bucket",
        "ADAPTER_CONFIG_PARAM": "/p/config",
        "PYTHONPATH": "/elsewhere",
        "SOMETHING_ELSE": "x",
    }
    for name, value in {**passed, **withheld}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JOB_USER", raising=False)
    runner = make_runner(s3, tmp_path / "work")
    task_id, attempt = run(runner, command(DUMP_ENV))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    env = json.loads(uploaded(s3, task_id)["env.json"])
    env.pop("LC_CTYPE", None)  # Python itself may set it in a C locale (PEP 538): not from the adapter
    work = tmp_path / "work" / f"runner-{os.getpid()}"
    assert env == {
        **passed,
        c.JOB_TASK_ID: task_id,
        c.JOB_INPUT_DIR: str(work / "in"),
        c.JOB_OUTPUT_DIR: str(work / "out"),
    }


def test_an_unknown_job_user_is_a_setting_error(s3: tuple[Any, str], tmp_path: Path) -> None:
    with pytest.raises(c.SettingError) as err:
        make_runner(s3, tmp_path / "work", job_user="no-such-user-for-gpu-jobs")
    assert err.value.name == c.JOB_USER.name and "no-such-user-for-gpu-jobs" in str(err.value)


def test_job_user_comes_from_the_environment(
    s3: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = pwd.getpwuid(os.geteuid())
    monkeypatch.setenv("JOB_USER", own.pw_name)
    runner = make_runner(s3, tmp_path / "work")
    assert runner.job_user is not None and (runner.job_user.name, runner.job_user.uid) == (own.pw_name, own.pw_uid)
    monkeypatch.delenv("JOB_USER")
    assert make_runner(s3, tmp_path / "work").job_user is None  # unset: the adapter's own user, as before


def python_for(uid: int) -> str | None:
    """An interpreter that `uid` may run (this venv's may sit under a directory only root can enter)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"], user=uid, group=uid, extra_groups=[], timeout=30, capture_output=True
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


@contextmanager
def shared_tmp() -> Iterator[Path]:
    """A temporary directory of this test's own that another user may enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="runner-security-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.parametrize("switch", ["setpriv", "popen"])
def test_the_job_runs_as_the_job_user_with_a_work_dir_it_can_write(
    s3: tuple[Any, str], monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    try:
        nobody = pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip("no user with uid 65534 here")
    if switch == "popen":  # a host without setpriv: Popen switches the user itself
        monkeypatch.setattr("adapter.runner.death_signal_prefix", lambda user=None: [])
    elif "--reuid" not in procs.death_signal_prefix(procs.JobUser.lookup(nobody.pw_name)):
        pytest.skip("no setpriv here")
    python = python_for(NOBODY)
    if python is None:
        pytest.skip("no python that uid 65534 may run")
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="inputs/data.txt", Body=b"input\n")
    code = """
import json, os
out, inp = os.environ['OUTPUT_DIR'], os.environ['INPUT_DIR']
open(os.path.join(inp, 'scratch'), 'w').write('x')
open(os.path.join(inp, 'data', 'data.txt'), 'a').write('worked on in place')
try:
    open('escape.txt', 'w')
    root_writable = True
except PermissionError:
    root_writable = False
ids = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups()), os.environ.get('HOME')]
json.dump(dict(ids=ids, root_writable=root_writable), open(os.path.join(out, 'id.json'), 'w'))
"""
    with shared_tmp() as base:
        runner = make_runner(s3, base / "work", job_user=nobody.pw_name)
        assert ("--reuid" in runner.launcher) is (switch == "setpriv")
        for _ in range(2):  # the second attempt reuses the work dir the first one's user wrote in
            task_type = command(code, python=python, s3_input="data")
            task_id, attempt = run(runner, task_type, {"data": "inputs/data.txt"})
            assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
            seen = json.loads(uploaded(s3, task_id)["id.json"])
            groups = set(seen["ids"][4])
            assert seen["ids"][:4] == [NOBODY, NOBODY, nobody.pw_gid, nobody.pw_gid]
            assert groups <= {nobody.pw_gid, *os.getgrouplist(nobody.pw_name, nobody.pw_gid)} and 0 not in groups
            assert seen["ids"][5] == nobody.pw_dir
            assert seen["root_writable"] is False
        work = base / "work" / f"runner-{os.getpid()}"
        assert {p.name for p in work.iterdir()} >= {"in", "out"}
        assert not any((work / "in").iterdir()) and not any((work / "out").iterdir())  # cleaned up as root


# -- 9: the metadata firewall rule is reported at start when missing -----------------------------------------------
def stub(bin_dir: Path, name: str, exit_code: int, message: str = "") -> Path:
    """An executable `name` in `bin_dir` that records its argv (one JSON list a line) and exits `exit_code`."""
    bin_dir.mkdir(exist_ok=True)
    calls = bin_dir / f"{name}.calls"
    path = bin_dir / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.stderr.write({message!r})\n"
        f"sys.exit({exit_code})\n"
    )
    path.chmod(0o755)
    return calls


def calls_of(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_metadata_rule_check_asks_iptables_and_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    v4 = stub(bin_dir, "iptables", 1, "iptables: Bad rule (does a matching rule exist in that chain?).\n")
    v6 = stub(bin_dir, "ip6tables", 0)
    monkeypatch.setenv("PATH", str(bin_dir))  # only the stubs: the host's firewall is never asked
    user = procs.JobUser("gpu-job", 990, 990, "/nonexistent")
    missing = procs.metadata_block_missing(user)
    assert len(missing) == 1 and missing[0].startswith("iptables") and "Bad rule" in missing[0]
    assert calls_of(v4) == [["-w", "5", "-C", *procs.metadata_block_rule(user, "169.254.169.254")]]
    assert calls_of(v6) == [["-w", "5", "-C", *procs.metadata_block_rule(user, "fd00:ec2::254")]]
    (bin_dir / "iptables").unlink()
    assert procs.metadata_block_missing(user) == ["iptables: not installed"]


def test_the_runner_reports_a_missing_metadata_rule_once(
    s3: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "iptables", 1, "iptables: Bad rule (does a matching rule exist in that chain?).\n")
    stub(bin_dir, "ip6tables", 1, "ip6tables: Bad rule (does a matching rule exist in that chain?).\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    own = pwd.getpwuid(os.geteuid()).pw_name  # a job user the test may run as without root: its own
    runner = make_runner(s3, tmp_path / "work", job_user=own)
    with caplog.at_level(logging.INFO, logger="adapter.runner"):
        for _ in range(2):
            _, attempt = run(runner, command("pass"))
            assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    reports = [r for r in caplog.records if r.getMessage() == "job_metadata_block_missing"]
    assert len(reports) == 1 and reports[0].levelno == logging.WARNING
    fields = reports[0].fields  # type: ignore[attr-defined]
    assert fields["job_user"] == own and len(fields["missing"]) == 2


def test_no_report_when_the_rules_are_in_place(
    s3: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "iptables", 0)
    stub(bin_dir, "ip6tables", 0)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    runner = make_runner(s3, tmp_path / "work", job_user=pwd.getpwuid(os.geteuid()).pw_name)
    with caplog.at_level(logging.INFO, logger="adapter.runner"):
        _, attempt = run(runner, command("pass"))
    assert attempt.outcome is AttemptOutcome.SUCCEEDED, attempt.error
    assert not [r for r in caplog.records if r.getMessage() == "job_metadata_block_missing"]
