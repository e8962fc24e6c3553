"""`make bootstrap`: the environment's state bucket, the runtime roles' permissions boundary (and the GitHub OIDC
access), kept in local state."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cdktf import App, Testing

from modules.bootstrap import BootstrapStack, boundary_for
from modules.config import load_config
from modules.iam import boundary_arn
from scripts.synth import GOLDEN_INPUTS
from tests.infra_helpers import load, policy_statements


def synth(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    config = replace(load_config("dev", env=GOLDEN_INPUTS["dev"]), **changes)
    outdir = tmp_path / "out"
    stack = BootstrapStack(App(outdir=str(outdir)), config=config, outdir=str(outdir))
    return dict(json.loads(Testing.synth(stack)))


def test_state_bucket_is_private_versioned_encrypted_and_never_destroyed(tmp_path: Path) -> None:
    doc = synth(tmp_path)
    (bucket,) = doc["resource"]["aws_s3_bucket"].values()
    assert bucket["bucket"] == "gpu-orchestrator-tfstate-dev-111111111111-us-east-1"
    assert bucket["lifecycle"] == {"prevent_destroy": True}
    (versioning,) = doc["resource"]["aws_s3_bucket_versioning"].values()
    assert versioning["versioning_configuration"] == {"status": "Enabled"}
    assert doc["resource"]["aws_s3_bucket_server_side_encryption_configuration"]
    (block,) = doc["resource"]["aws_s3_bucket_public_access_block"].values()
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    path = doc["terraform"]["backend"]["local"]["path"]
    assert path.endswith("state/bootstrap/dev/gpu-orchestrator-bootstrap.tfstate") and not path.startswith("/")
    assert "aws_iam_role" not in doc["resource"]  # no repository configured: no CI access


def test_github_access_when_a_repository_is_configured(tmp_path: Path) -> None:
    doc = synth(tmp_path, github_repository="example-org/gpu-orchestrator")
    roles = {r["name"] for r in doc["resource"]["aws_iam_role"].values()}
    assert roles == {"gpu-orchestrator-deploy-dev", "gpu-orchestrator-plan-dev"}
    assert doc["resource"]["aws_iam_openid_connect_provider"]
    assert {"StateBucketName", "DeployRoleArn", "PlanRoleArn", "OidcProviderArn"} <= set(doc["output"])


# --- the runtime roles' permissions boundary ---

BOUNDARY = "arn:aws:iam::111111111111:policy/gpu-orchestrator-boundary-dev"
CROSS_STACK = re.compile(r"\$\{data\.terraform_remote_state\.cross-stack-reference-input-([^.]+)\.outputs\.([^}]+)\}")
ARN_OF = {  # resource type -> (attribute holding the name, its ARN)
    "aws_sqs_queue": ("name", "arn:aws:sqs:us-east-1:111111111111:{}"),
    "aws_dynamodb_table": ("name", "arn:aws:dynamodb:us-east-1:111111111111:table/{}"),
    "aws_s3_bucket": ("bucket", "arn:aws:s3:::{}"),
}


def boundary_document(doc: dict[str, Any]) -> dict[str, Any]:
    (policy,) = [p for p in doc["resource"]["aws_iam_policy"].values() if p["name"] == "gpu-orchestrator-boundary-dev"]
    return dict(json.loads(policy["policy"]))


def test_bootstrap_makes_the_boundary_even_without_github_access(tmp_path: Path) -> None:
    doc = synth(tmp_path)
    document = boundary_document(doc)
    assert {st["Sid"] for st in document["Statement"]} >= {"Queues", "TaskTable", "NoIdentityOrCredentials"}
    assert "BoundaryPolicyArn" in doc["output"]
    config = load_config("dev", env=GOLDEN_INPUTS["dev"])
    assert boundary_for(config) == BOUNDARY == boundary_arn(account="111111111111", environment="dev")
    assert boundary_for(load_config("local", env={})) is None  # never bootstrapped: no boundary to name


def test_the_deploy_role_writes_roles_only_with_this_boundary(tmp_path: Path) -> None:
    doc = synth(tmp_path, github_repository="example-org/gpu-orchestrator")
    (identity,) = doc["data"]["aws_caller_identity"]
    boundary = f"arn:aws:iam::${{data.aws_caller_identity.{identity}.account_id}}:policy/gpu-orchestrator-boundary-dev"
    (deploy,) = [p for p in doc["resource"]["aws_iam_role_policy"].values() if p["name"] == "deploy"]
    (bounded,) = [s for s in json.loads(deploy["policy"])["Statement"] if s["Sid"] == "BoundedRoles"]
    assert bounded["Condition"] == {"StringEquals": {"iam:PermissionsBoundary": boundary}}
    boundary_document(doc)  # ...the policy bootstrap makes in the same apply


def _resolved(stacks: dict[str, Any], text: str) -> str:
    """A cross-stack reference, as the ARN of the resource it names (the producing stack's output -> resource)."""
    match = CROSS_STACK.fullmatch(text)
    if not match:
        return text
    stack, output = match.groups()
    kind, address, _ = stacks[stack]["output"][output]["value"].strip("${}").split(".")
    attr, arn_format = ARN_OF[kind]
    return arn_format.format(stacks[stack]["resource"][kind][address][attr])


@pytest.fixture(scope="module")
def boundary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return boundary_document(synth(tmp_path_factory.mktemp("boundary")))


def test_the_boundary_allows_everything_the_runtime_roles_are_granted(
    boundary: dict[str, Any], synthesized: Any
) -> None:
    """Each action on each resource of each runtime role's inline policy, as synthesized: inside the boundary (a
    boundary narrower than a grant would break that component in AWS while every moto test passed)."""
    from localaws.iam_eval import ALLOW, evaluate

    stacks = load(synthesized("dev"))
    iam = stacks["gpu-orchestrator-iam"]
    checked = 0
    for role in iam["resource"]["aws_iam_role"].values():
        assert role["permissions_boundary"] == BOUNDARY
        for st in policy_statements(iam, role["name"]):
            for action in st["Action"]:
                for resource in st["Resource"]:
                    # References inside an ARN too (a bucket's ARN + "/inputs/*", a table's + "/index/...").
                    arn = re.sub(r"\$\{[^}]+\}", lambda m: _resolved(stacks, m.group(0)), resource)
                    assert "${" not in arn, arn
                    assert evaluate([boundary], action, arn) == ALLOW, (role["name"], action, arn)
                    checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("iam:CreateUser", "arn:aws:iam::111111111111:user/backdoor"),
        ("iam:PutRolePolicy", "arn:aws:iam::111111111111:role/gpu-orchestrator-deploy-dev"),
        ("iam:PassRole", "arn:aws:iam::111111111111:role/gpu-instance-role-dev"),
        ("iam:DeleteRolePermissionsBoundary", "arn:aws:iam::111111111111:role/gpu-instance-role-dev"),
        ("sts:AssumeRole", "arn:aws:iam::111111111111:role/gpu-orchestrator-deploy-dev"),
        ("sqs:SendMessage", "arn:aws:sqs:us-east-1:111111111111:gpu_tasks_queue-prod"),  # another environment's
        ("sqs:DeleteQueue", "arn:aws:sqs:us-east-1:111111111111:gpu_tasks_queue-dev"),
        ("dynamodb:DeleteTable", "arn:aws:dynamodb:us-east-1:111111111111:table/task_store-dev"),
        ("dynamodb:Scan", "arn:aws:dynamodb:us-east-1:111111111111:table/task_store-dev"),
        ("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/secret"),
        ("s3:GetObject", "arn:aws:s3:::gpu-orchestrator-tfstate-dev-111111111111-us-east-1/dev/x.tfstate"),
        ("s3:PutBucketPolicy", "arn:aws:s3:::gpu-orchestrator-artifacts-dev-111111111111"),
        ("ec2:StopInstances", "arn:aws:ec2:us-east-1:111111111111:instance/i-0123456789abcdef0"),
        ("ec2:RunInstances", "*"),
        ("ssm:GetParameter", "arn:aws:ssm:us-east-1:111111111111:parameter/gpu-orchestrator/prod/adapter/config"),
        ("lambda:UpdateFunctionCode", "arn:aws:lambda:us-east-1:111111111111:function:shutdown-gpu-lambda-dev"),
        ("kms:Decrypt", "arn:aws:kms:us-east-1:111111111111:key/1234"),  # not through S3
    ],
)
def test_the_boundary_caps_whatever_a_role_is_given(boundary: dict[str, Any], action: str, resource: str) -> None:
    """What an `Action: *` inline policy on a runtime role still cannot do: nothing in IAM or STS, nothing outside
    this environment's own resources and actions."""
    from localaws.iam_eval import ALLOW, evaluate

    assert evaluate([boundary], action, resource) != ALLOW
