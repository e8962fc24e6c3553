"""An emulated GPU host: a moto instance that boots the way AWS would boot it, into a sandbox directory.

`EmulatedHost` watches one moto instance. When it reaches `running` the first time, the host runs the instance's
bootstrap exactly as synthesized: the user data its launch template gave it (create mode: EC2 hands user data to
cloud-init, which runs a script once per instance), or else the script of the SSM document an association targets it
with (adopt mode: the SSM agent runs it; localaws/gpu_resources.py records associations). Later boots start the
units that are enabled, as systemd does. When the instance stops, the units are stopped (SIGTERM to the adapter, as
at shutdown); the next start boots them again. A RebootInstances stops the units and boots again (below).

What is emulated, and how:
- The filesystem: every path the unit, bootstrap.sh and install.sh use lies under `root` (GPU_ADAPTER_SYSROOT for
  bootstrap.sh; for the unit, values of /etc, /opt, /var and /run paths are read as if chrooted there, including
  install.sh's built-in defaults ADAPTER_ROOT and ADAPTER_ENV_FILE).
- systemd: `systemctl` on the host's PATH is a stub (`systemctl()` below) that records each call in
  <root>/var/log/systemctl.calls and implements daemon-reload, enable [--now], start, stop, restart, is-active and
  poweroff (which stops the moto instance). A started unit runs under `supervise()`: Environment= then
  EnvironmentFile= (later files win, missing "-" files skipped), ExecStartPre, then ExecStart with ${VAR}s expanded,
  in WorkingDirectory; Restart= always after RestartSec; on stop SIGTERM then SIGCONT to the main process (systemd
  "will always send SIGCONT, to ensure that even suspended tasks can be terminated cleanly", systemd.kill(5)),
  SIGKILL after TimeoutStopSec (not to the whole cgroup, as KillMode=mixed would).
- Reboots: moto's RebootInstances leaves the instance `running` and changes nothing a caller can see; the local AWS
  counts each reboot of a running instance (localaws/autoscaling_api.py, installed in the moto server's process,
  which must be this one, as localaws.server.moto_server's is). The host's watcher sees its instance's count move
  and does what an OS reboot does (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RebootInstances.html):
  stops the units as at shutdown, then boots again (enabled units start; `boots` and `reboots` count it).
- The metadata service: each host serves its own while watched (localaws/metadata.py: its instance id, and in a
  fleet its target lifecycle state); INSTANCE_METADATA_URL in host.env names it, as 169.254.169.254 would on EC2.
- The instance role: the host's processes inherit `env` (the local AWS endpoint and credentials), in place of the
  credentials the metadata service would hand out.
- The host's own settings: a drop-in (<unit>.service.d/emulated-host.conf) adds the EnvironmentFile host.env, read
  last: ADAPTER_PYTHON is this interpreter (it has boto3), JOB_USER is empty (no user can be created in a sandbox),
  INSTANCE_METADATA_URL, then `overrides` (shorter waits for tests and the demo); `stop_timeout_s` a TimeoutStopSec.
Every process it starts is bounded in time and stopped by close().
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UNIT = "gpu-adapter"
CHROOTED = ("/etc/", "/opt/", "/var/", "/run/")
BOOTSTRAP_TIMEOUT_S = 180
STUB = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from localaws.host import systemctl
sys.exit(systemctl(sys.argv[1:]))
"""


def bootstrap_script(ec2: Any, ssm: Any, instance_id: str, associations: Iterable[Mapping[str, Any]]) -> str | None:
    """What would bootstrap this instance: its user data, else the script of a document associated with it."""
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    encoded = attribute.get("UserData", {}).get("Value")
    if encoded:
        return base64.b64decode(encoded).decode()
    for association in associations:
        if instance_id in association["instance_ids"]:
            version = str(association.get("document_version", "$DEFAULT"))
            which = {} if version.startswith("$") else {"DocumentVersion": version}
            content = json.loads(ssm.get_document(Name=association["name"], **which)["Content"])
            (step,) = [s for s in content["mainSteps"] if s["action"] == "aws:runShellScript"]
            return "\n".join(step["inputs"]["runCommand"]) + "\n"
    return None


class EmulatedHost:
    """One GPU host on a moto instance (see the module docstring). `states` lists the instance states seen, `boots`
    counts boots (`reboots` those after a RebootInstances), `running` says whether the adapter's unit is up,
    `metadata` is its metadata service; start() begins watching, close() stops all.

    Args:
        ec2: a boto3 EC2 client of the local AWS. instance_id: the moto instance.
        env: its AWS_* entries (the local AWS endpoint, region and credentials) are what every process on the host
            inherits; the rest is ignored: the adapter's settings come from SSM, as on a real host.
        log_path: the host's journal: the bootstrap's and the units' output, appended.
        root: the sandbox directory standing in for "/". Default: <log_path's dir>/host-<instance_id>.
        ssm, associations: for adopt mode: an SSM client and the created associations' attributes.
        overrides: settings for the adapter that win over its SSM config (host.env).
        stop_timeout_s: the unit's TimeoutStopSec on this host, when shorter than the unit file's is wanted.
    """

    def __init__(
        self,
        ec2: Any,
        instance_id: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        root: Path | None = None,
        ssm: Any = None,
        associations: Iterable[Mapping[str, Any]] = (),
        overrides: Mapping[str, str] | None = None,
        stop_timeout_s: float | None = None,
    ) -> None:
        from functools import partial

        from localaws import autoscaling
        from localaws.metadata import MetadataServer

        autoscaling.install()  # the reboot counter, among the rest of the model
        self.ec2, self.ssm, self.instance_id, self.log_path = ec2, ssm, instance_id, Path(log_path)
        self.associations = list(associations)
        self.root = Path(root) if root else self.log_path.parent / f"host-{instance_id}"
        self.states: list[str] = []
        self.boots = self.reboots = 0
        self._reboot_count = partial(autoscaling.reboots, instance_id)
        self._reboots_seen = self._reboot_count()
        self._booted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"emulated-host-{instance_id}", daemon=True)
        self.env = self._machine_env(env)
        # Bound now (its URL goes into host.env), serving from start() to close().
        self.metadata = MetadataServer(
            instance_id, target_lifecycle_state=partial(autoscaling.target_lifecycle_state, instance_id)
        )
        host_env = {"ADAPTER_PYTHON": sys.executable, "JOB_USER": "", "INSTANCE_METADATA_URL": self.metadata.url}
        self._prepare({**host_env, **(overrides or {})}, stop_timeout_s)

    def _machine_env(self, env: Mapping[str, str]) -> dict[str, str]:
        bin_dir = self.root / "usr" / "local" / "sbin"
        keep = {k: v for k, v in env.items() if k.startswith("AWS_")}  # the machine's identity, nothing of ours
        return {
            **keep,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "GPU_ADAPTER_SYSROOT": str(self.root),
            "EMULATED_INSTANCE_ID": self.instance_id,
            "EMULATED_JOURNAL": str(self.log_path),
        }

    def _prepare(self, host_env: Mapping[str, str], stop_timeout_s: float | None) -> None:
        stub = self.root / "usr" / "local" / "sbin" / "systemctl"
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(STUB.format(python=sys.executable, repo=str(ROOT)))
        stub.chmod(0o755)
        dropin = self.root / "etc" / "systemd" / "system" / f"{UNIT}.service.d"
        dropin.mkdir(parents=True, exist_ok=True)
        stop = f"TimeoutStopSec={stop_timeout_s:g}\n" if stop_timeout_s is not None else ""
        (dropin / "emulated-host.conf").write_text(f"[Service]\nEnvironmentFile=/etc/gpu-adapter/host.env\n{stop}")
        (self.root / "etc" / "gpu-adapter").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{k}={v}\n" for k, v in host_env.items())
        (self.root / "etc" / "gpu-adapter" / "host.env").write_text(lines)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def state(self) -> str:
        reservation = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]
        return str(reservation["Instances"][0]["State"]["Name"])

    @property
    def running(self) -> bool:
        return _active(self.root, UNIT) is not None

    @property
    def process(self) -> int | None:
        """The unit's main process (its supervisor), or None: what demo.py's EmulatedInstance.process told."""
        return _active(self.root, UNIT)

    def start(self) -> None:
        self.metadata.start()
        self.states.append(self.state())
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            state = self.state()
            if not self.states or self.states[-1] != state:
                self.states.append(state)
            rebooted = self._reboot_count()
            if state == "running" and not self._booted:
                self._reboots_seen = rebooted  # a reboot before this boot changes nothing more
                self._boot()
            elif state in ("stopping", "stopped") and self._booted:
                self._shutdown()
            elif state == "running" and rebooted > self._reboots_seen:
                self._reboots_seen = rebooted
                self.reboots += 1
                self._shutdown()
                self._boot()

    def _boot(self) -> None:
        self._booted = True
        self.boots += 1
        marker = self.root / "var" / "lib" / "cloud" / "instances" / self.instance_id / "boot-finished"
        if marker.exists():  # a later boot: systemd starts what is enabled
            wants = self.root / "etc" / "systemd" / "system" / "multi-user.target.wants" / f"{UNIT}.service"
            if wants.is_symlink():
                self.systemctl("start", UNIT)
            return
        self.run_bootstrap()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(time.time()))

    def run_bootstrap(self) -> subprocess.CompletedProcess[str] | None:
        """Run the instance's bootstrap now (what its first boot does); None if it has none."""
        script = bootstrap_script(self.ec2, self.ssm, self.instance_id, self.associations)
        if script is None:
            return None
        path = self.root / "var" / "lib" / "cloud" / "instances" / self.instance_id / "bootstrap.sh"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        path.chmod(0o700)
        done = subprocess.run(
            [str(path)], env=self.env, capture_output=True, text=True, timeout=BOOTSTRAP_TIMEOUT_S, check=False
        )
        with self.log_path.open("a") as journal:
            journal.write(done.stdout + done.stderr)
        return done

    def systemctl(self, *args: str) -> int:
        done = subprocess.run(
            [str(self.root / "usr" / "local" / "sbin" / "systemctl"), *args],
            env=self.env,
            timeout=BOOTSTRAP_TIMEOUT_S,
            check=False,
        )
        return done.returncode

    def _shutdown(self) -> None:
        self._booted = False
        self.systemctl("stop", UNIT)

    def calls(self) -> list[list[str]]:
        """Every systemctl call made on this host, in order."""
        path = self.root / "var" / "log" / "systemctl.calls"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a bootstrap in progress ends first (it may still start the unit)
            self._thread.join(timeout=BOOTSTRAP_TIMEOUT_S + 30)
        if self.running:
            self.systemctl("stop", UNIT)
        self.metadata.stop()


# -- the systemctl stub and the unit supervisor (run in their own processes) -----------------------------------
def _active(root: Path, unit: str) -> int | None:
    pid_file = root / "run" / f"{unit}.pid"
    try:
        pid = int(pid_file.read_text())
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped by its new parent
                return None
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def systemctl(argv: list[str]) -> int:
    root = Path(os.environ["GPU_ADAPTER_SYSROOT"])
    log = root / "var" / "log" / "systemctl.calls"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(argv) + "\n")
    flags = {a for a in argv if a.startswith("-")}
    words = [a for a in argv if not a.startswith("-")]
    verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    if verb == "daemon-reload":
        return 0
    if verb == "poweroff":
        import boto3

        boto3.client("ec2").stop_instances(InstanceIds=[os.environ["EMULATED_INSTANCE_ID"]])
        return 0
    for unit in units:
        if verb == "is-active":
            return 0 if _active(root, unit) else 3
        if verb == "enable":
            wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / f"{unit}.service"
            wants.parent.mkdir(parents=True, exist_ok=True)
            if not wants.is_symlink():
                wants.symlink_to(f"/etc/systemd/system/{unit}.service")
            if "--now" in flags:
                _start(root, unit)
        elif verb == "start":
            _start(root, unit)
        elif verb == "stop":
            _stop(root, unit)
        elif verb == "restart":
            _stop(root, unit)
            _start(root, unit)
        else:
            print(f"systemctl (emulated): {verb} is not emulated", file=sys.stderr)
            return 1
    return 0


def _start(root: Path, unit: str) -> None:
    if _active(root, unit):
        return  # systemd: starting an active unit does nothing
    (root / "run").mkdir(parents=True, exist_ok=True)
    journal = open(os.environ["EMULATED_JOURNAL"], "ab")  # noqa: SIM115 - handed to the child, closed here below
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from localaws.host import supervise; supervise()"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(root), unit],
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=journal,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    journal.close()
    (root / "run" / f"{unit}.pid").write_text(str(child.pid))


def _stop(root: Path, unit: str) -> None:
    pid = _active(root, unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _seconds(read_unit(root, unit), "TimeoutStopSec", 90) + 10
    while _active(root, unit) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _active(root, unit):
        os.killpg(pid, signal.SIGKILL)


def read_unit(root: Path, unit: str) -> dict[str, list[str]]:
    """[Service] assignments of the unit file and its drop-ins, in order (a key may repeat)."""
    base = root / "etc" / "systemd" / "system" / f"{unit}.service"
    files = [base, *sorted((base.parent / f"{unit}.service.d").glob("*.conf"))]
    service: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for line in path.read_text().splitlines():
            text = line.strip()
            if not text or text[0] in "#;":
                continue
            if text.startswith("["):
                section = text
            elif section == "[Service]":
                key, _, value = text.partition("=")
                service.setdefault(key.strip(), []).append(value.strip())
    return service


def _seconds(service: Mapping[str, list[str]], key: str, default: float) -> float:
    return float(service[key][-1]) if key in service else default


def _chroot(root: Path, value: str) -> str:
    return f"{root}{value}" if value.startswith(CHROOTED) else value


def _env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile lines: KEY=value or KEY="value" (\\ escapes), # comments."""
    out = {}
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        key, _, value = text.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key.strip()] = value
    return out


def service_env(root: Path, service: Mapping[str, list[str]], machine: Mapping[str, str]) -> dict[str, str]:
    env = {
        **machine,
        "ADAPTER_ROOT": f"{root}/opt/gpu-adapter",  # install.sh's defaults, chrooted
        "ADAPTER_ENV_FILE": f"{root}/etc/gpu-adapter/adapter.env",
    }
    for assignment in service.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = _chroot(root, value)
    for name in service.get("EnvironmentFile", []):
        path = Path(_chroot(root, name.removeprefix("-")))
        if path.is_file():
            env.update(_env_file(path))
        elif not name.startswith("-"):
            raise FileNotFoundError(f"EnvironmentFile {name} is missing")
    return env


def _command(root: Path, line: str, env: Mapping[str, str]) -> list[str]:
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), line)
    return [_chroot(root, word) for word in shlex.split(expanded)]


def supervise() -> None:
    """systemd's part for one unit: `python -c ... <root> <unit>`, started by the stub; ends on SIGTERM."""
    root, unit = Path(sys.argv[1]), sys.argv[2]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())  # the loop passes it on, once: a second means "now"
    while not stopping.is_set():
        service = read_unit(root, unit)
        workdir = Path(_chroot(root, service.get("WorkingDirectory", ["/"])[-1]))
        workdir.mkdir(parents=True, exist_ok=True)
        steps = [*service.get("ExecStartPre", []), *service["ExecStart"][-1:]]
        for step in steps:  # the environment is read again before each command, as systemd does
            env = service_env(root, service, os.environ)
            child = subprocess.Popen(_command(root, step, env), env=env, cwd=workdir)
            code = _wait(child, stopping, _seconds(service, "TimeoutStopSec", 90))
            if code != 0 or stopping.is_set():
                break
        if not stopping.is_set():
            stopping.wait(_seconds(service, "RestartSec", 0.1))  # Restart=always


def _wait(child: subprocess.Popen[bytes], stopping: threading.Event, stop_timeout: float) -> int:
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopping.is_set():
                child.send_signal(signal.SIGTERM)  # KillSignal=SIGTERM to the main process (KillMode=mixed)
                child.send_signal(signal.SIGCONT)  # as systemd: a suspended process gets to handle it too
                try:
                    return child.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    return child.wait(timeout=10)
