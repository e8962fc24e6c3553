"""GpuHost in both its modes, GpuInstances' grants in both modes and grant_ssm_agent, each in a fresh stack: what is
synthesized exactly (the launch template's IMDSv2, hop limit, encrypted gp3 root and tags; no ingress; the
association's targets; the bootstrap as user data and as the document's script), and the one-line refusals. The
launch template is modules/host_template.py's, shared with fleet mode (tests/test_construct_fleet.py)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from cdktf import TerraformStack

from modules.config import DEFAULT_AMI_PARAMETER
from modules.gpu import (
    ENVIRONMENT_TAG,
    SSM_AGENT_ACTIONS,
    SSM_ASSOCIATION_ACTIONS,
    SSM_DOCUMENT_ACTIONS,
    USER_DATA_LIMIT,
    GpuHost,
    GpuInstances,
    grant_ssm_agent,
    render_bootstrap,
)
from modules.host_template import HostSpec
from tests.infra_helpers import assert_grant, fresh_stack, one, policy_statements, reference, refusal, resources, synth

WHERE = {"region": "us-east-1", "account": "123456789012"}
IDS = ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]
HOST = HostSpec(
    environment="dev",
    parameter_prefix="/gpu-orchestrator/dev",
    instance_profile_name="gpu-instance-profile-dev",
    **WHERE,
)


def spec(**changes: Any) -> HostSpec:
    return replace(HOST, **changes)


def adopt(stack: TerraformStack, **props: Any) -> GpuHost:
    return GpuHost(
        stack,
        "gpu",
        **{"mode": "adopt", "name": "gpu-adapter-bootstrap-dev", "instance_ids": IDS, "host": HOST, **props},
    )


def created(stack: TerraformStack, **props: Any) -> GpuHost:
    return GpuHost(stack, "gpu", **{"mode": "create", "name": "gpu-adapter-dev", "host": HOST, **props})


@pytest.fixture(scope="module")
def adopted() -> tuple[GpuHost, dict[str, Any]]:
    host = adopt(fresh_stack())
    return host, synth(TerraformStack.of(host))


@pytest.fixture(scope="module")
def launched() -> tuple[GpuHost, dict[str, Any]]:
    built = created(fresh_stack(), instance_count=2, host=spec(root_volume_gb=200))
    return built, synth(TerraformStack.of(built))


# --- the rendered bootstrap ---


def test_bootstrap_is_one_posix_script_within_the_user_data_limit() -> None:
    script = render_bootstrap(environment="dev", parameter_prefix="/gpu-orchestrator/dev", region="eu-west-1")
    assert script.startswith("#!/bin/sh\n") and len(script.encode()) <= USER_DATA_LIMIT
    assert "ADAPTER_SSM_PREFIX='/gpu-orchestrator/dev/adapter'" in script and "AWS_DEFAULT_REGION='eu-west-1'" in script
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr


# --- adopt ---


def test_adopt_creates_the_document_and_an_association_on_exactly_the_instances(adopted: Any) -> None:
    host, doc = adopted
    document = one(doc, "aws_ssm_document")
    assert (document["name"], document["document_type"], document["document_format"]) == (
        "gpu-adapter-bootstrap-dev",
        "Command",
        "JSON",
    )
    # Terraform reads "$${" as a literal "${": what SSM receives is the rendered script, line for line.
    content = json.loads(document["content"].replace("$${", "${"))
    assert content["schemaVersion"] == "2.2"
    (step,) = content["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert "\n".join(step["inputs"]["runCommand"]) + "\n" == host.script
    assert "$${ADAPTER_PYTHON}" in document["content"]
    assert not re.search(r"(?<!\$)\$\{", document["content"])  # an unescaped "${" would be a Terraform interpolation
    association = one(doc, "aws_ssm_association")
    assert association["targets"] == [{"key": "InstanceIds", "values": IDS}]
    assert association["name"] == reference(TerraformStack.of(host), host.document.name)
    assert association["document_version"] == reference(TerraformStack.of(host), host.document.latest_version)
    for rtype in ("aws_instance", "aws_launch_template", "aws_security_group"):
        assert not resources(doc, rtype)


def test_adopt_spells_out_the_profile_attachment_per_instance(adopted: Any) -> None:
    host, _ = adopted
    assert host.instance_ids == tuple(IDS)
    assert host.attach_profile_commands == tuple(
        f"aws ec2 associate-iam-instance-profile --instance-id {i} --iam-instance-profile Name=gpu-instance-profile-dev"
        for i in IDS
    )


# --- create ---


def test_create_launch_template_is_imdsv2_encrypted_gp3_and_tagged(launched: Any) -> None:
    host, doc = launched
    template = one(doc, "aws_launch_template")
    assert template["metadata_options"] == {
        "http_endpoint": "enabled",
        "http_tokens": "required",
        "http_put_response_hop_limit": 1,
    }
    assert template["block_device_mappings"] == [
        {
            "device_name": "/dev/sda1",
            "ebs": {"volume_size": 200, "volume_type": "gp3", "encrypted": "true", "delete_on_termination": "true"},
        }
    ]
    tags = {ENVIRONMENT_TAG: "dev"}
    assert template["tag_specifications"] == [
        {"resource_type": "instance", "tags": tags},
        {"resource_type": "volume", "tags": tags},
    ]
    assert template["iam_instance_profile"] == {"name": "gpu-instance-profile-dev"}
    assert template["instance_type"] == "g5.xlarge"
    assert base64.b64decode(template["user_data"]).decode() == host.script
    (address,) = doc["data"]["aws_ssm_parameter"]
    assert doc["data"]["aws_ssm_parameter"][address]["name"] == DEFAULT_AMI_PARAMETER
    assert template["image_id"] == f"${{data.aws_ssm_parameter.{address}.insecure_value}}"


def test_create_mode_keeps_its_terraform_addresses(launched: Any) -> None:
    """The template, its security group and AMI lookup are the host construct's own resources (HostTemplate adds them
    to it), so the addresses applied environments hold in their state do not move."""
    _, doc = launched
    assert [a.split("_")[:2] for a in doc["resource"]["aws_launch_template"]] == [["gpu", "launch-template"]]
    assert [a.split("_")[:2] for a in doc["resource"]["aws_security_group"]] == [["gpu", "security-group"]]
    assert [a.split("_")[:2] for a in doc["data"]["aws_ssm_parameter"]] == [["gpu", "ami"]]


def test_create_security_group_has_no_ingress_and_only_https_out(launched: Any) -> None:
    _, doc = launched
    group = one(doc, "aws_security_group")
    assert group["ingress"] == []
    (egress,) = group["egress"]
    assert (egress["protocol"], egress["from_port"], egress["to_port"], egress["cidr_blocks"]) == (
        "tcp",
        443,
        443,
        ["0.0.0.0/0"],
    )


def test_create_instances_come_from_the_template_and_never_fight_the_controller(launched: Any) -> None:
    host, doc = launched
    instances = resources(doc, "aws_instance")
    assert len(instances) == 2 and not resources(doc, "aws_ec2_instance_state")
    stack = TerraformStack.of(host)
    template_id = reference(stack, host.launch_template.id)
    for n, instance in enumerate(sorted(instances, key=lambda i: i["tags"]["Name"])):
        assert instance["launch_template"]["id"] == template_id
        assert instance["tags"] == {ENVIRONMENT_TAG: "dev", "Name": f"gpu-adapter-dev-{n}"}
        assert instance["lifecycle"] == {"ignore_changes": ["launch_template", "ami", "user_data"]}
    assert sorted(reference(stack, i) for i in host.instance_ids) == sorted(
        f"${{aws_instance.{a}.id}}" for a in doc["resource"]["aws_instance"]
    )
    assert host.attach_profile_commands == ()


# --- grants ---


def test_instances_grant_is_by_id_when_adopted_and_by_tag_when_created() -> None:
    stack = fresh_stack()
    by_id = GpuInstances(instance_ids=IDS, **WHERE)
    arns = [f"arn:aws:ec2:us-east-1:123456789012:instance/{i}" for i in IDS]
    assert_grant(stack, by_id.grant_start, [(["ec2:StartInstances"], arns)])
    stack = fresh_stack()
    by_tag = GpuInstances(environment="dev", **WHERE)
    assert_grant(stack, by_tag.grant_stop, [(["ec2:StopInstances"], ["arn:aws:ec2:us-east-1:123456789012:instance/*"])])
    (statement,) = policy_statements(synth(stack), f"grantee-{len(stack.node.children) - 1}")
    assert statement["Condition"] == {"StringEquals": {f"aws:ResourceTag/{ENVIRONMENT_TAG}": "dev"}}


def test_host_grants_are_its_instances(launched: Any) -> None:
    host, _ = launched
    statements = host.grant(_role(fresh_stack()), "ec2:RebootInstances")
    assert [(s.actions, s.resources, s.conditions) for s in statements] == [
        (("ec2:RebootInstances",), host.instances.arns, host.instances.conditions)
    ]


def _role(stack: TerraformStack) -> Any:
    from modules.iam import Role

    return Role(stack, "r", name="r", assumed_by="ec2.amazonaws.com", description="grantee")


def test_ssm_agent_grant_reads_only_the_bootstrap_document() -> None:
    document = "arn:aws:ssm:us-east-1:123456789012:document/gpu-adapter-bootstrap-dev"
    assert_grant(
        fresh_stack(),
        lambda role: grant_ssm_agent(role, **WHERE, document_name="gpu-adapter-bootstrap-dev"),
        [(SSM_AGENT_ACTIONS + SSM_ASSOCIATION_ACTIONS, ["*"]), (SSM_DOCUMENT_ACTIONS, [document])],
    )
    assert_grant(fresh_stack(), lambda role: grant_ssm_agent(role, **WHERE), [(SSM_AGENT_ACTIONS, ["*"])])


# --- refusals ---


@pytest.mark.parametrize(
    ("build", "prop"),
    [
        (lambda s: adopt(s, mode="spot"), "mode"),
        (lambda s: adopt(s, mode="fleet"), "mode"),  # modules/fleet.py GpuFleet's
        (lambda s: adopt(s, instance_ids=[]), "instance_ids"),
        (lambda s: adopt(s, instance_ids=["i-nope"]), "instance_ids"),
        (lambda s: adopt(s, instance_ids=[IDS[0], IDS[0]]), "instance_ids"),
        (lambda s: adopt(s, instance_ids=[f"i-0{n:016x}" for n in range(21)]), "instance_ids"),
        (lambda s: adopt(s, host=spec(instance_type="p4d.24xlarge")), "instance_type"),
        (lambda s: adopt(s, name="AWS-bootstrap"), "name"),
        (lambda s: adopt(s, host=spec(parameter_prefix="gpu-orchestrator/dev")), "parameter_prefix"),
        (lambda s: adopt(s, host=spec(environment="dev env")), "environment"),
        (lambda s: adopt(s, host=spec(instance_profile_name="no spaces")), "instance_profile_name"),
        (lambda s: adopt(s, instance_count=2), "instance_count"),
        (lambda s: adopt(s, host=spec(root_device_name="/dev/xvda")), "root_device_name"),
        (lambda s: created(s, instance_ids=IDS), "instance_ids"),
        (lambda s: created(s, instance_count=0), "instance_count"),
        (lambda s: created(s, instance_count=21), "instance_count"),
        (lambda s: created(s, host=spec(root_volume_gb=16385)), "root_volume_gb"),
        (lambda s: created(s, host=spec(instance_type="G5")), "instance_type"),
        (lambda s: created(s, host=spec(ami_parameter="ami-0123456789abcdef0")), "ami_parameter"),
        (lambda s: created(s, name="no spaces allowed"), "name"),
    ],
)
def test_refusals_name_the_prop_in_one_line(build: Any, prop: str) -> None:
    assert f"/gpu: {prop}=" in refusal(build)


def test_instances_need_ids_or_an_environment_but_not_both() -> None:
    from modules.props import ConstructPropError

    with pytest.raises(ConstructPropError, match="^GpuInstances: instance_ids=\\(\\) is empty"):
        GpuInstances(**WHERE)
    with pytest.raises(ConstructPropError, match="^GpuInstances: environment='dev'"):
        GpuInstances(instance_ids=IDS, environment="dev", **WHERE)


# --- from the environment's config ---


def test_from_config_builds_each_mode_and_scopes_grants_alike() -> None:
    from modules.config import EnvironmentConfig
    from modules.gpu import bootstrap_document_name, instances_for

    adopting = EnvironmentConfig(name="dev", account="123456789012", gpu_instance_ids=tuple(IDS))
    host = GpuHost.from_config(fresh_stack(), "gpu", config=adopting, instance_profile_name="p")
    assert (host.mode, host.name, host.instance_ids) == ("adopt", "gpu-adapter-bootstrap-dev", tuple(IDS))
    assert bootstrap_document_name(adopting) == one(synth(TerraformStack.of(host)), "aws_ssm_document")["name"]
    assert instances_for(adopting).arns == host.instances.arns

    creating = EnvironmentConfig(name="dev", account="123456789012", gpu_mode="create", gpu_instance_count=3)
    host = GpuHost.from_config(fresh_stack(), "gpu", config=creating, instance_profile_name="p")
    assert (host.mode, host.name, len(host.instance_ids)) == ("create", "gpu-adapter-dev", 3)
    assert bootstrap_document_name(creating) is None
    assert (instances_for(creating).arns, instances_for(creating).conditions) == (
        host.instances.arns,
        host.instances.conditions,
    )
