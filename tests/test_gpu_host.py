"""The GPU host stack end to end on the local AWS (moto, 127.0.0.1): a GpuHost synthesized in a stack of its own is
created by localaws/gpu_resources.py beside the `local` environment, and an EmulatedHost (localaws/host.py) boots the
moto instance through the bootstrap exactly as synthesized - the association's document in adopt mode, the launch
template's user data in create mode. The adapter is installed from the bundle in the local S3 by its own install.sh
and starts; stopping the instance stops it, starting it starts it again. Every wait is bounded, every host closed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localaws.gpu_resources import MOTO_GPU_AMI, DataResolver, escape_literals
from localaws.host import EmulatedHost
from localaws.resources import create
from localaws.tfjson import Stack, resource_order
from modules.gpu import ENVIRONMENT_TAG
from tests.infra_helpers import fresh_stack, synth

REPO = Path(__file__).resolve().parents[1]
SEED_ID = "i-0f0f6fd680921de5f"  # environments.toml [local]
PREFIX = "/gpu-orchestrator/local"  # where the local environment's AdapterRelease publishes
OVERRIDES = {"WAIT_TIME_SECONDS": "1", "HEARTBEAT_SECONDS": "2", "WORKER_ID": "emulated-gpu"}


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def events(journal: Path, name: str) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    lines = [line for line in journal.read_text().splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e.get("event") == name]


def build_host_stack(local: Any, doc: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Create the synthesized stack's resources in the local AWS (seed id -> its moto instance), as localaws.build
    does for the environment's stacks; the created attributes by address."""
    text = json.dumps(doc)
    for seed, moto_id in local.instance_id_map.items():
        text = text.replace(seed, moto_id)
    stack = escape_literals(Stack("gpu", tmp_path, json.loads(text)))

    def client(service: str) -> Any:
        return local.client(service)

    resolver = DataResolver(client)
    resolver.bind(stack)
    for res in resource_order(stack):
        resolver.attributes[res.key] = create(res.type, client, resolver.resolve("gpu", res.body), tmp_path, res.key)
    return resolver.attributes


@pytest.fixture
def hosts() -> Iterator[list[EmulatedHost]]:
    started: list[EmulatedHost] = []
    yield started
    for host in started:
        host.close()


def watch(host: EmulatedHost, hosts: list[EmulatedHost]) -> EmulatedHost:
    hosts.append(host)  # closed by the fixture, whatever happens
    host.start()
    return host


def first_start(host: EmulatedHost) -> Path:
    until(lambda: events(host.log_path, "worker_started"), 90, "the installed adapter's first log line")
    return host.log_path


def test_adopt_mode_association_installs_and_starts_the_adapter(local_aws: Any, tmp_path: Path, hosts: list) -> None:
    """The `local` environment's own gpu stack, as localaws.build created it: its association targets the adopted
    instance, and the document it names is what boots the host."""
    (association,) = local_aws.of_type("aws_ssm_association").values()
    instance_id = local_aws.instance_id_map[SEED_ID]
    assert association["instance_ids"] == [instance_id]

    host = EmulatedHost(
        local_aws.client("ec2"),
        instance_id,
        local_aws.env(),
        tmp_path / "journal.log",
        ssm=local_aws.client("ssm"),
        associations=[association],
        overrides=OVERRIDES,
    )
    watch(host, hosts)
    assert host.states == ["stopped"] and not host.running  # localaws.build leaves adopted instances stopped
    local_aws.client("ec2").start_instances(InstanceIds=[instance_id])  # what the controller does on a submit
    journal = first_start(host)
    root = host.root
    unit = root / "etc/systemd/system/gpu-adapter.service"
    assert unit.read_text() == (REPO / "adapter/deploy/gpu-adapter.service").read_text()
    assert (root / "opt/gpu-adapter/install.sh").stat().st_mode & 0o111
    install_env = (root / "etc/gpu-adapter/install.env").read_text().splitlines()
    assert f"ADAPTER_SSM_PREFIX={PREFIX}/adapter" in install_env and "AWS_DEFAULT_REGION=us-east-1" in install_env
    bundle = local_aws.client("ssm").get_parameter(Name=f"{PREFIX}/adapter/bundle")["Parameter"]["Value"]
    marker = json.loads((root / "opt/gpu-adapter/current/.installed").read_text())
    assert marker["bundle"] == bundle  # installed by install.sh from the local S3, as ExecStartPre
    assert host.calls() == [
        ["is-active", "--quiet", "gpu-adapter"],
        ["daemon-reload"],
        ["enable", "--now", "gpu-adapter"],
    ]

    # The association runs again (a new document version, a new target): nothing changes, nothing restarts.
    pid = host.process
    again = host.run_bootstrap()
    assert again is not None and again.returncode == 0, again
    assert json.loads(again.stdout.splitlines()[-1])["changed"] == ""
    assert host.calls()[3:] == [["is-active", "--quiet", "gpu-adapter"], ["enable", "--now", "gpu-adapter"]]
    assert host.process == pid

    # Stop: SIGTERM, the adapter exits 0. Start: systemd starts the enabled unit; no bootstrap on a later boot.
    local_aws.client("ec2").stop_instances(InstanceIds=[instance_id])
    until(lambda: not host.running, 60, "the adapter to stop with the instance")
    assert [e["code"] for e in events(journal, "exit")] == [0]
    local_aws.client("ec2").start_instances(InstanceIds=[instance_id])
    until(lambda: len(events(journal, "worker_started")) == 2, 90, "the adapter to start on the second boot")
    assert host.boots == 2 and host.calls()[-1] == ["start", "gpu-adapter"]
    assert host.states.count("running") == 2 and "stopped" in host.states[1:]


def test_create_mode_user_data_installs_and_starts_the_adapter(local_aws: Any, tmp_path: Path, hosts: list) -> None:
    from modules.gpu import GpuHost
    from modules.host_template import HostSpec
    from modules.iam import Role

    stack = fresh_stack("gpu")
    Role(
        stack,
        "role",
        name="gpu-created-role",
        assumed_by="ec2.amazonaws.com",
        description="The created hosts' role",
        instance_profile_name="gpu-created-profile",
    )
    GpuHost(
        stack,
        "gpu",
        mode="create",
        name="gpu-adapter-local",
        host=HostSpec(
            environment="local",
            parameter_prefix=PREFIX,
            region=local_aws.region,
            account="123456789012",
            instance_profile_name="gpu-created-profile",
        ),
    )
    doc = synth(stack)
    # The role and its profile exist before the template names them (Terraform orders by reference; here by hand).
    doc["resource"]["aws_launch_template"] = {
        k: {**v, "depends_on": [f"aws_iam_instance_profile.{p}" for p in doc["resource"]["aws_iam_instance_profile"]]}
        for k, v in doc["resource"]["aws_launch_template"].items()
    }
    created = build_host_stack(local_aws, doc, tmp_path)
    (instance,) = [a for k, a in created.items() if "/aws_instance." in k]
    ec2 = local_aws.client("ec2")
    (described,) = ec2.describe_instances(InstanceIds=[instance["id"]])["Reservations"][0]["Instances"]
    assert described["ImageId"] == MOTO_GPU_AMI and described["InstanceType"] == "g5.xlarge"
    assert {"Key": ENVIRONMENT_TAG, "Value": "local"} in described["Tags"]
    assert described["IamInstanceProfile"]["Arn"].endswith("/gpu-created-profile")
    (group,) = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in described["SecurityGroups"]])[
        "SecurityGroups"
    ]
    assert group["IpPermissions"] == []
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in group["IpPermissionsEgress"]] == [("tcp", 443, 443)]

    host = EmulatedHost(ec2, instance["id"], local_aws.env(), tmp_path / "journal.log", overrides=OVERRIDES)
    first_start(watch(host, hosts))  # RunInstances left it running: the first boot runs the user data
    assert (host.root / "opt/gpu-adapter/current/.installed").is_file()
    assert ["enable", "--now", "gpu-adapter"] in host.calls()
    host.close()
    assert not host.running


def test_the_creators_refuse_what_they_do_not_model(tmp_path: Path) -> None:
    """Strict like localaws/resources.py: an unmodelled argument, block field or data source fails, before any call."""
    from localaws.tfjson import UnsupportedTerraform

    def no_aws(service: str) -> Any:
        raise AssertionError(f"no {service} call expected")

    with pytest.raises(UnsupportedTerraform, match=r"\['key_name'\] of aws_launch_template"):
        create("aws_launch_template", no_aws, {"name": "x", "key_name": "k"}, tmp_path, "gpu/aws_launch_template.x")
    with pytest.raises(UnsupportedTerraform, match="targets field"):
        create("aws_ssm_association", no_aws, {"name": "d", "targets": [{"key": "InstanceIds", "x": 1}]}, tmp_path, "a")
    stack = Stack("gpu", tmp_path, {"data": {"aws_ami": {"gpu": {"owners": ["amazon"]}}}})
    with pytest.raises(UnsupportedTerraform, match="data source aws_ami is not modelled"):
        DataResolver(no_aws).bind(stack)
