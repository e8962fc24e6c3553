"""scripts/tf.py up to the boundary we cannot cross here (AWS and the provider registry).

Terraform itself is replaced by a recording executable that speaks the same command line and prints plans in
Terraform's documented `show -json` format; everything on our side of that line is the real code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from modules.config import load_config
from modules.layout import ALARM, DYNAMODB, IAM, LAMBDA, SQS, STACK_ORDER
from scripts import tf
from scripts.plansummary import render, summarize
from scripts.synth import GOLDEN_INPUTS

FAKE = r"""#!{python}
import json, os, sys
args = sys.argv[1:]
cwd = args.pop(0).split("=", 1)[1]
stack = os.path.basename(cwd)
with open(os.environ["FAKE_TF_LOG"], "a") as log:
    log.write(json.dumps([stack] + args) + "\n")
if args[0] == "plan":
    out = next(a.split("=", 1)[1] for a in args if a.startswith("-out="))
    open(out, "w").write("plan of " + stack)
elif args[0] == "show":
    plans = json.load(open(os.environ["FAKE_TF_PLANS"]))
    print(json.dumps(plans.get(stack, {{"format_version": "1.2", "resource_changes": []}})))
"""


def change(address: str, actions: list[str], name: str | None = None) -> dict[str, Any]:
    rtype = address.split(".")[0]
    return {
        "address": address,
        "mode": "managed",
        "type": rtype,
        "change": {"actions": actions, "before": None, "after": {"name": name} if name else {}},
    }


@pytest.fixture
def dev(synthesized: Any, tmp_path: Path) -> tuple[Any, Path]:
    outdir = tmp_path / "out"
    shutil.copytree(synthesized("dev"), outdir)
    return load_config("dev", env=GOLDEN_INPUTS["dev"]), outdir


@pytest.fixture
def fake_terraform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    binary = tmp_path / "bin" / "terraform"
    binary.parent.mkdir()
    binary.write_text(FAKE.format(python=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    log, plans = tmp_path / "calls.log", tmp_path / "plans.json"
    log.write_text("")
    plans.write_text("{}")
    monkeypatch.setenv("FAKE_TF_LOG", str(log))
    monkeypatch.setenv("FAKE_TF_PLANS", str(plans))
    return str(binary), log, plans


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_plan_keeps_files_manifest_and_a_readable_summary(dev: Any, fake_terraform: Any, tmp_path: Path) -> None:
    config, outdir = dev
    binary, log, plans_json = fake_terraform
    plans_json.write_text(
        json.dumps(
            {
                SQS: {"resource_changes": [change("aws_sqs_queue.q", ["create"], "gpu_tasks_queue-dev")]},
                DYNAMODB: {
                    "resource_changes": [change("aws_dynamodb_table.t", ["delete", "create"], "task_store-dev")],
                    "output_changes": {"TableArn": {"actions": ["update"]}},
                },
                IAM: {"resource_changes": [change("aws_iam_role.r", ["update"]), change("aws_iam_role.x", ["no-op"])]},
            }
        )
    )
    plans = tmp_path / "plans"
    summary = tf.plan(config, binary, plans, outdir)
    text = summary.read_text()
    assert f"**1 to add, 1 to change, 1 to replace, 0 to destroy** across {len(STACK_ORDER)} stacks" in text
    assert "REPLACES stateful aws_dynamodb_table.t (task_store-dev)" in text
    manifest = json.loads((plans / "manifest.json").read_text())
    assert sorted(manifest["stacks"]) == sorted(STACK_ORDER)
    assert [c[0] for c in calls(log) if c[1] == "plan"] == list(STACK_ORDER)
    assert all((plans / f"{s}.tfplan").exists() for s in STACK_ORDER)


def test_apply_runs_exactly_the_reviewed_plans_in_order(dev: Any, fake_terraform: Any, tmp_path: Path) -> None:
    config, outdir = dev
    binary, log, plans_json = fake_terraform
    plans_json.write_text(
        json.dumps(
            {
                SQS: {"resource_changes": [change("aws_sqs_queue.q", ["update"])]},
                LAMBDA: {"resource_changes": [change("aws_lambda_function.f", ["update"])]},
            }
        )
    )
    plans = tmp_path / "plans"
    tf.plan(config, binary, plans, outdir)
    log.write_text("")
    tf.apply(config, binary, plans, outdir)
    applied = [(c[0], c[-1]) for c in calls(log) if c[1] == "apply"]
    assert applied == [(SQS, str(plans / f"{SQS}.tfplan")), (LAMBDA, str(plans / f"{LAMBDA}.tfplan"))]
    with pytest.raises(tf.Refused, match="no reviewed plan"):
        tf.apply(config, binary, plans, outdir)  # a plan is good for one apply


def test_apply_refuses_a_stale_plan(dev: Any, fake_terraform: Any, tmp_path: Path) -> None:
    config, outdir = dev
    binary, log, _ = fake_terraform
    plans = tmp_path / "plans"
    tf.plan(config, binary, plans, outdir)
    doc_path = outdir / "stacks" / ALARM / "cdk.tf.json"
    doc = json.loads(doc_path.read_text())
    doc["resource"]["aws_cloudwatch_metric_alarm"][next(iter(doc["resource"]["aws_cloudwatch_metric_alarm"]))][
        "threshold"
    ] = 1
    doc_path.write_text(json.dumps(doc))
    log.write_text("")
    with pytest.raises(tf.Refused, match="stale plan"):
        tf.apply(config, binary, plans, outdir)
    assert calls(log) == []


def test_apply_refuses_a_missing_or_edited_plan_file(dev: Any, fake_terraform: Any, tmp_path: Path) -> None:
    config, outdir = dev
    binary, _, _ = fake_terraform
    plans = tmp_path / "plans"
    tf.plan(config, binary, plans, outdir)
    (plans / f"{IAM}.tfplan").write_text("something else")
    with pytest.raises(tf.Refused, match="changed after review"):
        tf.apply(config, binary, plans, outdir)
    (plans / f"{IAM}.tfplan").unlink()
    with pytest.raises(tf.Refused, match="missing"):
        tf.apply(config, binary, plans, outdir)


def test_apply_stops_when_an_applied_stack_changed_outputs_later_plans_read(
    dev: Any, fake_terraform: Any, tmp_path: Path
) -> None:
    config, outdir = dev
    binary, log, plans_json = fake_terraform
    plans_json.write_text(
        json.dumps(
            {
                SQS: {
                    "resource_changes": [change("aws_sqs_queue.q", ["delete", "create"])],
                    "output_changes": {"QueueArn": {"actions": ["update"]}},
                },
                IAM: {"resource_changes": [change("aws_iam_role_policy.p", ["update"])]},
            }
        )
    )
    plans = tmp_path / "plans"
    tf.plan(config, binary, plans, outdir)
    log.write_text("")
    with pytest.raises(
        tf.Refused, match=r"changed outputs \['QueueArn'\] that gpu-orchestrator-iam read: run `make plan ENV=dev`"
    ):
        tf.apply(config, binary, plans, outdir)
    assert [c[0] for c in calls(log) if c[1] == "apply"] == [SQS]


def test_destroy_needs_the_environment_name_and_keeps_the_table_and_dlq(
    dev: Any, fake_terraform: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config, outdir = dev
    binary, log, _ = fake_terraform
    with pytest.raises(tf.Refused, match="type the environment name 'dev'"):
        tf.destroy(config, binary, "prod", outdir)
    assert calls(log) == []
    tf.destroy(config, binary, "dev", outdir)
    destroys = {c[0]: c[1:] for c in calls(log) if c[1] == "destroy"}
    assert DYNAMODB not in destroys  # nothing in it but the retained table
    assert [s for s in reversed(STACK_ORDER) if s in destroys] == [s for s in reversed(STACK_ORDER) if s != DYNAMODB]
    sqs_targets = sorted(a.split("=", 1)[1] for a in destroys[SQS] if a.startswith("-target="))
    assert [t.split(".")[0] for t in sqs_targets] == ["aws_sqs_queue", "aws_sqs_queue_redrive_allow_policy"]
    assert all("dlq" not in t for t in sqs_targets if t.startswith("aws_sqs_queue."))
    assert not any(a.startswith("-target=") for a in destroys[IAM])
    out = capsys.readouterr().out
    assert "kept gpu-orchestrator-sqs: aws_sqs_queue.tasks_dlq" in out
    assert "kept gpu-orchestrator-dynamodb: aws_dynamodb_table.tasks_table" in out


def test_preflight_says_what_to_do_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(tf.Refused, match="emulated .*`make local`"):
        tf.preflight(load_config("local", env={}))
    dev = load_config("dev", env=GOLDEN_INPUTS["dev"])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tf.Refused, match="terraform is not on PATH"):
        tf.preflight(dev)
    fake = tmp_path / "terraform"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(tf.Refused, match="no AWS credentials for environment 'dev'"):
        tf.preflight(dev)


def test_cli_exit_status_and_single_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", os.defpath)
    assert tf.main(["plan", "--env", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: environment 'local' is emulated")


def test_summary_of_no_changes() -> None:
    text = render("dev", [summarize(s, {"resource_changes": [change("a.b", ["no-op"])]}) for s in STACK_ORDER])
    assert "**0 to add, 0 to change, 0 to replace, 0 to destroy**" in text and "⚠" not in text
