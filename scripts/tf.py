"""Terraform for ops, per stack in dependency order: plan (kept + summarized), apply (exactly the reviewed plans),
destroy (everything but what is retained), bootstrap (the state bucket).

    python scripts/tf.py plan|apply|destroy|bootstrap|preflight --env dev

Run through `make`, which synthesizes first. Plans live in plans/<env>/: one .tfplan, one .json (terraform show)
per stack, summary.md, and manifest.json binding each plan to the exact synthesized JSON it was made from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modules.config import ConfigError, EnvironmentConfig, load_config  # noqa: E402
from modules.layout import BOOTSTRAP, STACK_ORDER  # noqa: E402
from scripts.plansummary import render, summarize  # noqa: E402


class Refused(Exception):
    """One line for the operator: what is wrong and what to do. Exit status 2."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preflight(config: EnvironmentConfig) -> str:
    """Refuse early, in one line, when Terraform cannot possibly run against this environment."""
    if not config.remote_state:
        raise Refused(
            f"environment '{config.name}' is emulated (no AWS): use `make local`, or pick ENV=dev|staging|prod"
        )
    terraform = shutil.which("terraform")
    if terraform is None:
        raise Refused(
            "terraform is not on PATH: install Terraform >= 1.10 "
            "(https://developer.hashicorp.com/terraform/install) and run again"
        )
    import boto3

    if boto3.Session().get_credentials() is None:
        raise Refused(
            f"no AWS credentials for environment '{config.name}' (account {config.account}): "
            "run `aws sso login` / export AWS_PROFILE, or use the deploy role from CI"
        )
    return terraform


def default_outdir(config: EnvironmentConfig) -> Path:
    return ROOT / "cdktf.out" / config.name


def stack_dir(config: EnvironmentConfig, stack: str, outdir: Path) -> Path:
    path = outdir / "stacks" / stack / "cdk.tf.json"
    if not path.exists():
        raise Refused(f"{path} is missing: run `make synth ENV={config.name}` first")
    return path.parent


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def terraform(binary: str, cwd: Path, *args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [binary, f"-chdir={cwd}", *args], check=False, text=True, stdout=subprocess.PIPE if capture else None
    )
    if result.returncode != 0:
        raise Refused(f"terraform {args[0]} failed in {_rel(cwd)} (exit {result.returncode}); see above")
    return result.stdout or ""


def plan(config: EnvironmentConfig, binary: str, plans: Path, outdir: Path) -> Path:
    if plans.exists():
        shutil.rmtree(plans)  # old plans must never be applied by mistake
    plans.mkdir(parents=True)
    manifest: dict[str, Any] = {"environment": config.name, "account": config.account, "stacks": {}}
    summaries = []
    for stack in STACK_ORDER:
        cwd = stack_dir(config, stack, outdir)
        terraform(binary, cwd, "init", "-input=false", "-no-color")
        plan_file = plans / f"{stack}.tfplan"
        terraform(binary, cwd, "plan", "-input=false", "-no-color", f"-out={plan_file}")
        shown = json.loads(terraform(binary, cwd, "show", "-json", str(plan_file), capture=True))
        (plans / f"{stack}.json").write_text(json.dumps(shown, indent=1, sort_keys=True))
        summary = summarize(stack, shown)
        summaries.append(summary)
        manifest["stacks"][stack] = {
            "config_sha256": sha256(cwd / "cdk.tf.json"),
            "plan_sha256": sha256(plan_file),
            "has_changes": summary.has_changes,
            "outputs_changed": summary.outputs_changed,
        }
    (plans / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    text = render(config.name, summaries)
    (plans / "summary.md").write_text(text)
    print(text)
    print(f"Plans kept in {_rel(plans)}; `make apply ENV={config.name}` applies exactly these.")
    return plans / "summary.md"


def check_plans(config: EnvironmentConfig, plans: Path, outdir: Path) -> dict[str, Any]:
    """The manifest, if every plan file is present, unmodified, and made from the JSON synthesized now."""
    manifest_path = plans / "manifest.json"
    if not manifest_path.exists():
        raise Refused(f"no reviewed plan for '{config.name}': run `make plan ENV={config.name}` and review it first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("environment") != config.name or manifest.get("account") != config.account:
        raise Refused(f"{_rel(manifest_path)} was made for another environment or account")
    for stack in STACK_ORDER:
        entry = manifest["stacks"].get(stack)
        plan_file = plans / f"{stack}.tfplan"
        if entry is None or not plan_file.exists():
            raise Refused(f"the plan of {stack} is missing: run `make plan ENV={config.name}` again")
        if sha256(plan_file) != entry["plan_sha256"]:
            raise Refused(f"{_rel(plan_file)} changed after review: run `make plan ENV={config.name}`")
        if sha256(stack_dir(config, stack, outdir) / "cdk.tf.json") != entry["config_sha256"]:
            raise Refused(
                f"{stack} was synthesized differently since its plan (stale plan): "
                f"run `make plan ENV={config.name}` and review again"
            )
    return manifest


def apply(config: EnvironmentConfig, binary: str, plans: Path, outdir: Path) -> None:
    manifest = check_plans(config, plans, outdir)
    pending = [s for s in STACK_ORDER if manifest["stacks"][s]["has_changes"]]
    if not pending:
        print(f"nothing to apply for '{config.name}': every stack is up to date")
        return
    for index, stack in enumerate(pending):
        cwd = stack_dir(config, stack, outdir)
        terraform(binary, cwd, "init", "-input=false", "-no-color")  # a fresh runner has no .terraform yet
        terraform(binary, cwd, "apply", "-input=false", "-no-color", str(plans / f"{stack}.tfplan"))
        (plans / f"{stack}.tfplan").unlink()  # applied: a plan is good for one apply
        later = pending[index + 1 :]
        if manifest["stacks"][stack]["outputs_changed"] and later:
            # Later plans read this stack's outputs at plan time; applying them now would use the old values.
            (plans / "manifest.json").unlink()
            raise Refused(
                f"{stack} changed outputs {manifest['stacks'][stack]['outputs_changed']} that "
                f"{', '.join(later)} read: run `make plan ENV={config.name}` and review the rest"
            )
    (plans / "manifest.json").unlink()
    print(f"applied {len(pending)} stack(s) of '{config.name}'")


def retained(cwd: Path) -> tuple[list[str], list[str]]:
    """(addresses kept because of prevent_destroy, every other managed address) of one stack."""
    doc = json.loads((cwd / "cdk.tf.json").read_text())
    kept: list[str] = []
    others: list[str] = []
    for rtype, items in sorted(doc.get("resource", {}).items()):
        for name, body in sorted(items.items()):
            (kept if body.get("lifecycle", {}).get("prevent_destroy") else others).append(f"{rtype}.{name}")
    return kept, others


def destroy(config: EnvironmentConfig, binary: str, answer: str, outdir: Path) -> None:
    if answer != config.name:
        raise Refused(f"not confirmed: type the environment name '{config.name}' to destroy it")
    kept_all: list[str] = []
    for stack in reversed(STACK_ORDER):
        cwd = stack_dir(config, stack, outdir)
        kept, others = retained(cwd)
        terraform(binary, cwd, "init", "-input=false", "-no-color")
        if kept:
            if others:
                targets = [f"-target={address}" for address in others]
                terraform(binary, cwd, "destroy", "-input=false", "-no-color", "-auto-approve", *targets)
            kept_all += [f"{stack}: {address}" for address in kept]
        else:
            terraform(binary, cwd, "destroy", "-input=false", "-no-color", "-auto-approve")
    print(
        f"destroyed '{config.name}' except these retained resources (prevent_destroy; delete them by hand "
        "only if you mean to lose their data):"
    )
    for line in kept_all:
        print(f"  kept {line}")


def bootstrap(config: EnvironmentConfig, binary: str) -> None:
    cwd = stack_dir(config, BOOTSTRAP, ROOT / "cdktf.out" / f"bootstrap-{config.name}")
    terraform(binary, cwd, "init", "-input=false", "-no-color")
    terraform(binary, cwd, "apply", "-input=false", "-no-color")  # interactive approval: a one-time, manual step
    print(f"state bucket {config.resolved_state_bucket} is ready; its own state is in state/bootstrap/{config.name}/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["preflight", "plan", "apply", "destroy", "bootstrap"])
    parser.add_argument("--env", required=True)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.env)
        binary = preflight(config)
        plans = ROOT / "plans" / config.name
        if args.command == "plan":
            plan(config, binary, plans, default_outdir(config))
        elif args.command == "apply":
            apply(config, binary, plans, default_outdir(config))
        elif args.command == "destroy":
            print(
                f"This destroys environment '{config.name}' (account {config.account}, {config.region}), "
                "except the task table and the dead-letter queue."
            )
            answer = input(f"Type the environment name ({config.name}) to confirm: ").strip()
            destroy(config, binary, answer, default_outdir(config))
        elif args.command == "bootstrap":
            bootstrap(config, binary)
    except (Refused, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EOFError:
        print("error: no confirmation given (stdin closed)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
