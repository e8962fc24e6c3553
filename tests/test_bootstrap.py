"""`make bootstrap`: the environment's state bucket (and the GitHub OIDC access), kept in local state."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from cdktf import App, Testing

from modules.bootstrap import BootstrapStack
from modules.config import load_config
from scripts.synth import GOLDEN_INPUTS


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
