"""Rollout: adapter/deploy/install.sh against the moto server (SSM parameters + bundle in the artifacts bucket), the
adapter started from what it installed noticing a newer bundle, the job user and its metadata firewall rules, and the
systemd unit agreeing with the code.

install.sh always runs with stubs of the system commands it may call (id, useradd, iptables, ip6tables) first on
PATH: they record their calls and keep their state in the test's tmp dir, so no test creates a real user or touches
the host's firewall."""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import tests._adapter_support as support
from adapter.config import from_env
from adapter.procs import METADATA_ADDRESSES, JobUser, metadata_block_rule
from adapter.rollout import EXIT_NEW_BUNDLE
from tests._adapter_support import REPO, worker_env

module_aws, aws = support.module_aws, support.aws  # fixtures: one local AWS per module
INSTALL = REPO / "adapter" / "deploy" / "install.sh"
UNIT = REPO / "adapter" / "deploy" / "gpu-adapter.service"


def bundle_zip(marker: str) -> bytes:
    """adapter/, core/ and functions/ at the zip root (the adapter imports core); `marker` makes each bundle
    distinct."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in ("adapter", "core", "functions"):
            for path in sorted((REPO / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(REPO).as_posix())
        zf.writestr("adapter/RELEASE", marker)
    return out.getvalue()


def publish(aws: Any, prefix: str, data: bytes, *, name_hash: str | None = None) -> str:
    short = name_hash or hashlib.sha256(data).hexdigest()[:16]
    key = f"adapter/adapter-{short}.zip"
    aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=data)
    uri = f"s3://{aws.bucket}/{key}"
    aws.client("ssm").put_parameter(Name=f"{prefix}/bundle", Value=uri, Type="String", Overwrite=True)
    return uri


# A stand-in for each system command install.sh may call: records its argv in $STUB_STATE/calls and keeps the users
# it "created" and the rules it "added" in $STUB_STATE, so a second run sees what the first one did.
STUB = """#!{python}
import json, os, sys
state = os.environ["STUB_STATE"]
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as fh:
    fh.write(json.dumps([name, *args]) + "\\n")
def lines(path):
    return open(path).read().splitlines() if os.path.exists(path) else []
users = os.path.join(state, "users")
if name == "id":
    sys.exit(0 if args[-1] in lines(users) else 1)
if name == "useradd":
    open(users, "a").write(args[-1] + "\\n")
    sys.exit(0)
if os.environ.get("STUB_FIREWALL_FAILS"):
    sys.stderr.write(name + " v1.8.8 (nf_tables): Could not fetch rule set generation id: Permission denied\\n")
    sys.exit(4)
rules, (op, rule) = os.path.join(state, name + ".rules"), (args[2], " ".join(args[3:]))  # after -w 5
if op == "-C":
    sys.exit(0 if rule in lines(rules) else 1)
open(rules, "a").write(rule + "\\n")
"""
STUBBED = ("id", "useradd", "iptables", "ip6tables")


def install(aws: Any, prefix: str, root: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    state = root / "stub"
    if not state.is_dir():
        (state / "bin").mkdir(parents=True)
        for name in STUBBED:
            (state / "bin" / name).write_text(STUB.format(python=sys.executable))
            (state / "bin" / name).chmod(0o755)
    env = {
        **aws.env(),
        "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "STUB_STATE": str(state),
        "PYTHON": sys.executable,
        "ADAPTER_SSM_PREFIX": prefix,
        "ADAPTER_ROOT": str(root / "opt"),
        "ADAPTER_ENV_FILE": str(root / "etc" / "adapter.env"),
        **extra,
    }
    return subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False)


def stub_calls(root: Path) -> list[list[str]]:
    calls = root / "stub" / "calls"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def read_env_file(path: Path) -> dict[str, str]:
    """The subset of systemd's EnvironmentFile syntax install.sh writes: KEY="value" with \\ and " escaped."""
    out = {}
    for line in path.read_text().splitlines():
        key, quoted = line.split("=", 1)
        assert quoted.startswith('"') and quoted.endswith('"')
        out[key] = re.sub(r"\\(.)", r"\1", quoted[1:-1])
    return out


def test_install_flip_and_the_running_adapter_notices_a_new_bundle(aws: Any, tmp_path: Path) -> None:
    prefix = f"/gpu-orchestrator/test-{aws.queue_url.rsplit('-', 1)[-1]}/adapter"
    config = {k: v for k, v in aws.env().items() if k.startswith(("TASK_", "ARTIFACTS_"))}
    config["NOTE"] = 'quotes " and \\ survive'
    aws.client("ssm").put_parameter(Name=f"{prefix}/config", Value=json.dumps(config), Type="String")
    first = publish(aws, prefix, bundle_zip("one"))
    done = install(aws, prefix, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    opt = tmp_path / "opt"
    current = opt / "current"
    assert os.readlink(current) == f"releases/{first[-20:-4]}"  # the sha256-16 from the bundle's name
    assert (current / "adapter" / "RELEASE").read_text() == "one" and (current / "functions").is_dir()
    assert os.access(opt / "install.sh", os.X_OK)  # the next boot runs the release's own installer
    env = read_env_file(tmp_path / "etc" / "adapter.env")
    assert {k: env[k] for k in config} == config
    assert env["ADAPTER_BUNDLE_URI"] == first and env["ADAPTER_BUNDLE_PARAM"] == f"{prefix}/bundle"

    # The adapter, run from the installed release with that env file, exits 75 once the parameter names another.
    run_env = {**worker_env(aws, tmp_path / "work", ROLLOUT_CHECK_SECONDS="1"), **env, "PYTHONPATH": str(current)}
    with open(tmp_path / "adapter.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapter"],
            cwd=tmp_path,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        second = publish(aws, prefix, bundle_zip("two"))
        assert proc.wait(timeout=30) == EXIT_NEW_BUNDLE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert "new_bundle" in (tmp_path / "adapter.log").read_text()
    done = install(aws, prefix, tmp_path)  # what ExecStartPre does on the restart
    assert done.returncode == 0, done.stdout + done.stderr
    assert (current / "adapter" / "RELEASE").read_text() == "two"
    assert read_env_file(tmp_path / "etc" / "adapter.env")["ADAPTER_BUNDLE_URI"] == second
    assert len(list((opt / "releases").iterdir())) == 2  # the previous release stays for a quick rollback
    assert stub_calls(tmp_path) == []  # no JOB_USER: no user, no firewall rule


def publish_good(aws: Any, name: str) -> str:
    prefix = f"/gpu-orchestrator/{name}-{aws.queue_url.rsplit('-', 1)[-1]}/adapter"
    aws.client("ssm").put_parameter(Name=f"{prefix}/config", Value="{}", Type="String")
    publish(aws, prefix, bundle_zip(name))
    return prefix


def test_install_creates_the_job_user_and_blocks_its_metadata_access_once(aws: Any, tmp_path: Path) -> None:
    prefix = publish_good(aws, "jobuser")
    done = install(aws, prefix, tmp_path, JOB_USER="gpu-job")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = stub_calls(tmp_path)
    useradd = [call for call in calls if call[0] == "useradd"]
    assert len(useradd) == 1 and useradd[0][-1] == "gpu-job"
    assert {"--system", "--no-create-home"} <= set(useradd[0])
    user = JobUser("gpu-job", 0, 0, "/nonexistent")  # the adapter's check of the same rules (uid unused)
    expected = []
    for tool, address in METADATA_ADDRESSES:
        rule = metadata_block_rule(user, address)
        expected += [[tool, "-w", "5", "-C", *rule], [tool, "-w", "5", "-I", *rule]]
    assert [call for call in calls if call[0] != "useradd" and call[0] != "id"] == expected
    assert "job_metadata_block_missing" not in done.stdout
    assert (tmp_path / "opt" / "current" / ".installed").is_file()

    again = install(aws, prefix, tmp_path, JOB_USER="gpu-job")  # every boot runs it: nothing added twice
    assert again.returncode == 0, again.stdout + again.stderr
    later = stub_calls(tmp_path)[len(calls) :]
    assert not [call for call in later if call[0] == "useradd" or "-I" in call]
    assert [call for call in later if "-C" in call] == [call for call in expected if "-C" in call]


def test_install_says_so_when_the_metadata_rules_cannot_be_added(aws: Any, tmp_path: Path) -> None:
    prefix = publish_good(aws, "nofirewall")
    done = install(aws, prefix, tmp_path, JOB_USER="gpu-job", STUB_FIREWALL_FAILS="1")
    assert done.returncode == 0, done.stdout + done.stderr  # the adapter still installs, and reports it at start
    lines = [json.loads(line) for line in done.stdout.splitlines() if "job_metadata_block_missing" in line]
    assert [line["tool"] for line in lines] == [tool for tool, _ in METADATA_ADDRESSES]
    assert all(line["job_user"] == "gpu-job" and "Permission denied" in line["error"] for line in lines)
    assert (tmp_path / "opt" / "current" / ".installed").is_file()


def test_install_refuses_a_job_user_name_it_cannot_pass_safely(aws: Any, tmp_path: Path) -> None:
    prefix = publish_good(aws, "badname")
    done = install(aws, prefix, tmp_path, JOB_USER="gpu job;x")
    assert done.returncode != 0 and "JOB_USER" in done.stdout + done.stderr
    assert stub_calls(tmp_path) == []


def test_a_bundle_whose_hash_does_not_match_is_refused(aws: Any, tmp_path: Path) -> None:
    prefix = f"/gpu-orchestrator/bad-{aws.queue_url.rsplit('-', 1)[-1]}/adapter"
    aws.client("ssm").put_parameter(Name=f"{prefix}/config", Value="{}", Type="String")
    publish(aws, prefix, bundle_zip("tampered"), name_hash="0123456789abcdef")
    done = install(aws, prefix, tmp_path)
    assert done.returncode == 1 and "does not match" in done.stdout  # nothing installed before: cannot start
    assert not (tmp_path / "opt" / "current").exists()
    good = publish(aws, prefix, bundle_zip("good"))
    assert install(aws, prefix, tmp_path).returncode == 0
    publish(aws, prefix, bundle_zip("tampered"), name_hash="fedcba9876543210")
    done = install(aws, prefix, tmp_path)
    assert done.returncode == 0 and "install_failed" in done.stdout  # keeps serving the installed release
    assert read_env_file(tmp_path / "etc" / "adapter.env")["ADAPTER_BUNDLE_URI"] == good


def test_unit_file_matches_the_adapter() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["ExecStartPre"] == "/opt/gpu-adapter/install.sh"
    assert service["ExecStart"] == "/usr/bin/env ${ADAPTER_PYTHON} -m adapter"
    assert "Environment=ADAPTER_PYTHON=python3" in UNIT.read_text()
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "always"
    assert service["SuccessExitStatus"] == str(EXIT_NEW_BUNDLE)
    # Jobs run as the unprivileged user install.sh (ExecStartPre, same environment) creates and firewalls.
    assert "Environment=JOB_USER=gpu-job" in UNIT.read_text()
    config = from_env(
        {"TASK_QUEUE_URL": "q", "TASK_DLQ_URL": "d", "TASK_TABLE_NAME": "t", "ARTIFACTS_BUCKET": "b"},
        queue_visibility_s=300,
        queue_max_receives=3,
    )
    # The warm stop must fit: a long poll in flight, then the job's grace, then the requeue calls.
    assert int(service["TimeoutStopSec"]) > config.wait_time_s + config.stop_grace_s + 10


# --- bootstrap.sh: what both gpu modes run to install the unit, install.sh and install.env ---

BOOTSTRAP = REPO / "adapter" / "deploy" / "bootstrap.sh"
# systemctl stand-in: records its argv; `is-active` answers from $STUB_STATE/active (the test decides).
SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUB_STATE/systemctl.calls"
if [ "$1" = is-active ]; then test -e "$STUB_STATE/active"; fi
"""


def bootstrap(root: Path, *command: str, active: bool = False) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `command` (bootstrap.sh by hand, or a rendered script with sh) unprivileged with root as its "/" and the
    systemctl stub first on PATH; the result and the systemctl calls this run made."""
    state = root / "stub"
    (state / "bin").mkdir(parents=True, exist_ok=True)
    (state / "bin" / "systemctl").write_text(SYSTEMCTL)
    (state / "bin" / "systemctl").chmod(0o755)
    (state / "active").unlink(missing_ok=True)
    if active:
        (state / "active").touch()
    calls = state / "systemctl.calls"
    before = calls.read_text().splitlines() if calls.exists() else []
    env = {
        "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "STUB_STATE": str(state),
        "GPU_ADAPTER_SYSROOT": str(root / "sysroot"),
    }
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=60, check=False)
    after = calls.read_text().splitlines() if calls.exists() else []
    return done, after[len(before) :]


def installed(root: Path) -> dict[str, tuple[str, int]]:
    """path under the sysroot -> (content, mode) of what bootstrap.sh writes."""
    out = {}
    for rel in ("etc/systemd/system/gpu-adapter.service", "opt/gpu-adapter/install.sh", "etc/gpu-adapter/install.env"):
        path = root / "sysroot" / rel
        out[rel] = (path.read_text(), path.stat().st_mode & 0o777)
    return out


def test_bootstrap_by_hand_installs_the_files_and_starts_the_unit_once(tmp_path: Path) -> None:
    first, calls = bootstrap(tmp_path, "sh", str(BOOTSTRAP), "/gpu-orchestrator/dev/adapter", "eu-west-1")
    assert first.returncode == 0, first.stderr
    files = installed(tmp_path)
    assert files["etc/systemd/system/gpu-adapter.service"] == (UNIT.read_text(), 0o644)
    assert files["opt/gpu-adapter/install.sh"] == (INSTALL.read_text(), 0o755)
    env_lines = files["etc/gpu-adapter/install.env"][0].splitlines()
    assert env_lines[1:] == ["ADAPTER_SSM_PREFIX=/gpu-orchestrator/dev/adapter", "AWS_DEFAULT_REGION=eu-west-1"]
    assert calls == ["is-active --quiet gpu-adapter", "daemon-reload", "enable --now gpu-adapter"]
    assert json.loads(first.stdout.splitlines()[-1])["event"] == "bootstrapped"

    again, calls = bootstrap(tmp_path, "sh", str(BOOTSTRAP), "/gpu-orchestrator/dev/adapter", "eu-west-1", active=True)
    assert again.returncode == 0, again.stderr
    assert calls == ["is-active --quiet gpu-adapter", "enable --now gpu-adapter"]  # no reload, no restart
    assert json.loads(again.stdout.splitlines()[-1])["changed"] == "" and installed(tmp_path) == files


def test_rendered_bootstrap_writes_the_same_files_and_restarts_only_on_a_change(tmp_path: Path) -> None:
    from modules.gpu import render_bootstrap

    by_hand = tmp_path / "by-hand"
    assert bootstrap(by_hand, "sh", str(BOOTSTRAP), "/gpu-orchestrator/dev/adapter", "us-east-1")[0].returncode == 0
    script = tmp_path / "rendered.sh"
    script.write_text(render_bootstrap(environment="dev", parameter_prefix="/gpu-orchestrator/dev", region="us-east-1"))
    rendered = tmp_path / "rendered"
    done, calls = bootstrap(rendered, "sh", str(script))  # how the SSM agent runs a runShellScript
    assert done.returncode == 0, done.stderr
    assert installed(rendered) == installed(by_hand)
    assert calls == ["is-active --quiet gpu-adapter", "daemon-reload", "enable --now gpu-adapter"]

    # A release replaced install.sh with its own; the environment's prefix changed while the adapter runs.
    (rendered / "sysroot/opt/gpu-adapter/install.sh").write_text("#!/bin/sh\n# from the release\n")
    moved = render_bootstrap(environment="dev", parameter_prefix="/gpu-orchestrator/dev2", region="us-east-1")
    script.write_text(moved)
    done, calls = bootstrap(rendered, "sh", str(script), active=True)
    assert done.returncode == 0, done.stderr
    assert calls == ["is-active --quiet gpu-adapter", "enable --now gpu-adapter", "restart gpu-adapter"]
    assert json.loads(done.stdout.splitlines()[-1])["changed"] == "/etc/gpu-adapter/install.env"
    assert (rendered / "sysroot/opt/gpu-adapter/install.sh").read_text().endswith("# from the release\n")


@pytest.mark.parametrize("prefix", ["", "gpu-orchestrator/dev/adapter", "/gpu orchestrator/dev", "/x/'y'"])
def test_bootstrap_refuses_a_prefix_it_cannot_write_safely(tmp_path: Path, prefix: str) -> None:
    done, calls = bootstrap(tmp_path, "sh", str(BOOTSTRAP), prefix, "us-east-1")
    assert done.returncode == 2 and "SSM prefix" in done.stderr
    assert calls == [] and not (tmp_path / "sysroot").exists()
