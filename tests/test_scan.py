"""`make scan`: checkov over every stack of every environment, for real, with the reviewed suppressions.

The scan runs as `make scan` runs it (scripts/scan.py --install: creates .venv-checkov from requirements-checkov.lock
when it is missing or stale, a no-op otherwise), over every environment this session already synthesized (fleet
mode's local-fleet among them), in one checkov run. A second run, on `local` only, feeds the checks that prove the
scan can fail; a third scans local-fleet switched to Spot (a mixed instances policy instead of the warm pool) with
the same suppressions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import scan
from scripts.synth import ENVIRONMENTS

ROOT = Path(__file__).resolve().parent.parent
TOTAL = re.compile(r"^checkov: (\d+) passed, (\d+) failed, (\d+) suppressed$", re.M)


def entry(**overrides: Any) -> scan.Suppression:
    fields = {
        "check": "CKV_AWS_117",
        "stack": "gpu-orchestrator-lambda",
        "resource": "aws_lambda_function.shutdown_function_*",
        "reason": "r" * scan.MIN_REASON,
    }
    return scan.Suppression(**{**fields, **overrides})


def finding(
    address: str = "aws_lambda_function.shutdown_function_080C6528",
    *,
    env: str = "local",
    check: str = "CKV_AWS_117",
    passed: bool = False,
) -> scan.Finding:
    return scan.Finding(env, "gpu-orchestrator-lambda", check, "", address, passed)


# -- the real scan --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed() -> Path:
    """.venv-checkov as `make scan` leaves it (installs on the first run of a fresh clone: pip, minutes)."""
    scan.install()
    return scan.VENV / "bin" / "checkov"


def test_every_environment_scans_clean_with_only_the_reviewed_suppressions(synthesized: Any, installed: Path) -> None:
    pairs = [f"--synthesized={env}={synthesized(env)}" for env in ENVIRONMENTS]
    done = subprocess.run(
        [sys.executable, "scripts/scan.py", "--install", *pairs], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for env in ENVIRONMENTS:
        assert re.search(rf"^checkov {env}: \d+ passed, 0 failed, \d+ suppressed$", done.stdout, re.M), done.stdout
    (total,) = TOTAL.findall(done.stdout)
    passed, failed, suppressed = map(int, total)
    entries = scan.load_suppressions(scan.SUPPRESSIONS)
    # each entry matches exactly one failure in each environment it names (the scan fails otherwise)
    assert (failed, suppressed) == (0, sum(len(e.environments) for e in entries))
    assert passed > 50 * len(ENVIRONMENTS)  # the scan really ran checks on every stack


@pytest.fixture(scope="module")
def local_report(synthesized: Any, installed: Path) -> tuple[Any, dict[Path, tuple[str, str]]]:
    files = scan.stack_files({"local": synthesized("local")})
    return scan.run_checkov(files, installed), files


def test_a_finding_without_its_suppression_fails_the_scan(local_report: Any) -> None:
    report, files = local_report
    findings = scan.findings_from_report(report, files)
    entries = scan.load_suppressions(scan.SUPPRESSIONS)
    dropped = next(e for e in entries if e.check == "CKV_AWS_117")
    outcome = scan.evaluate(findings, [e for e in entries if e is not dropped], ["local"])
    assert not outcome.ok
    assert [(f.check_id, f.address.split(".")[0]) for f in outcome.failed] == [("CKV_AWS_117", "aws_lambda_function")]
    lines = scan.report_lines(outcome)
    assert any(line.startswith("FAILED") and "CKV_AWS_117" in line for line in lines)
    assert lines[-1].startswith("checkov: ") and ", 1 failed, " in lines[-1]


def test_a_suppression_that_matches_nothing_is_stale(local_report: Any) -> None:
    report, files = local_report
    findings = scan.findings_from_report(report, files)
    entries = scan.load_suppressions(scan.SUPPRESSIONS)
    # CKV_AWS_116 (no dead-letter queue) was fixed, not suppressed: an entry for it matches nothing
    stale = entry(check="CKV_AWS_116")
    outcome = scan.evaluate(findings, [*entries, stale], ["local"])
    assert outcome.failed == [] and outcome.stale == [(stale, "local")] and not outcome.ok


def test_checkov_reports_are_read_with_full_addresses(local_report: Any) -> None:
    report, files = local_report
    findings = scan.findings_from_report(report, files)
    assert {f.environment for f in findings} == {"local"}
    assert all(re.match(r"^(aws_[a-z0-9_]+|provider)\.", f.address) for f in findings), sorted(
        {f.address for f in findings}
    )
    assert {f.stack for f in findings} <= set(scan.STACK_ORDER)


def test_the_spot_fleet_scans_clean_with_local_fleets_suppressions(tmp_path: Path, installed: Path) -> None:
    """Spot is an environment setting, not an environment: local-fleet with fleet_spot must need no suppression the
    on-demand fleet does not (each entry for local-fleet still matches exactly one failure there)."""
    from dataclasses import replace

    from cdktf import App

    import main
    from modules.config import load_config, validate

    config = replace(load_config("local-fleet", env={}), fleet_spot=True, spot_instance_types=("g3.8xlarge",))
    validate(config)
    app = App(outdir=str(tmp_path))
    main.compose(app, config)
    app.synth()
    group = json.loads((tmp_path / "stacks" / "gpu-orchestrator-gpu" / "cdk.tf.json").read_text())
    (body,) = group["resource"]["aws_autoscaling_group"].values()
    assert "mixed_instances_policy" in body and "warm_pool" not in body
    files = scan.stack_files({"local-fleet": tmp_path})
    findings = scan.findings_from_report(scan.run_checkov(files, installed), files)
    outcome = scan.evaluate(findings, scan.load_suppressions(scan.SUPPRESSIONS), ["local-fleet"])
    assert outcome.ok, scan.report_lines(outcome)
    zones = [f for f in findings if f.check_id == "CKV_AWS_394"]
    assert [f.address.split(".")[:2] for f in zones] == [["data", "aws_availability_zones"]]


# -- the rules, without checkov -------------------------------------------------------------------------------------


def test_an_entry_suppresses_one_check_on_one_resource_of_one_stack() -> None:
    suppression = entry()
    assert suppression.matches(finding())
    assert not suppression.matches(finding(check="CKV_AWS_116"))
    assert not suppression.matches(finding("aws_lambda_function.other_function_1234"))
    assert not suppression.matches(finding(passed=True))
    assert not entry(environments=("prod",)).matches(finding(env="local"))


def test_an_entry_matching_two_resources_is_too_broad() -> None:
    broad = entry(resource="aws_lambda_function.s*")
    outcome = scan.evaluate([finding(), finding("aws_lambda_function.shutdown_other_1234")], [broad], ["local"])
    assert outcome.too_broad == [
        (broad, "local", ["aws_lambda_function.shutdown_function_080C6528", "aws_lambda_function.shutdown_other_1234"])
    ]
    assert not outcome.ok


def test_staleness_is_judged_per_environment_the_entry_names() -> None:
    everywhere, prod_only = entry(), entry(check="CKV_AWS_272", environments=("prod",))
    outcome = scan.evaluate([finding(env="local")], [everywhere, prod_only], ["local", "dev"])
    assert outcome.stale == [(everywhere, "dev")]  # prod was not scanned: its entry is not judged


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\n'
            'resource = "aws_lambda_function.x"\nreason = "ok"',
            "write a reason",
        ),
        (
            'check = "*"\nstack = "gpu-orchestrator-lambda"\nresource = "aws_lambda_function.x"\nreason = "{r}"',
            "not a checkov check id",
        ),
        ('check = "CKV_AWS_117"\nstack = "*"\nresource = "aws_lambda_function.x"\nreason = "{r}"', "is not one of"),
        ('check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\nresource = "*"\nreason = "{r}"', "must be"),
        ('check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\nresource = "aws_*.x"\nreason = "{r}"', "must be"),
        (
            'check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\n'
            'resource = "aws_lambda_function.*"\nreason = "{r}"',
            "must be",
        ),
        (
            'check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\n'
            'resource = "aws_lambda_function.x"\nreason = "{r}"\n'
            'environments = ["qa"]',
            "environments",
        ),
        (
            'check = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\n'
            'resource = "aws_lambda_function.x"\nreason = "{r}"\n'
            "skip_all = true",
            "unknown key",
        ),
    ],
)
def test_suppression_file_refuses_global_or_unexplained_entries(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "suppressions.toml"
    path.write_text("[[suppression]]\n" + text.replace("{r}", "r" * scan.MIN_REASON) + "\n")
    with pytest.raises(scan.ScanError, match=problem):
        scan.load_suppressions(path)


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    block = (
        '[[suppression]]\ncheck = "CKV_AWS_117"\nstack = "gpu-orchestrator-lambda"\n'
        f'resource = "aws_lambda_function.x"\nreason = "{"r" * scan.MIN_REASON}"\n'
    )
    path = tmp_path / "suppressions.toml"
    path.write_text(block + block)
    with pytest.raises(scan.ScanError, match="duplicate"):
        scan.load_suppressions(path)


def test_the_committed_suppressions_are_valid_and_each_has_a_reason() -> None:
    entries = scan.load_suppressions(scan.SUPPRESSIONS)
    assert entries and all(len(e.reason) >= scan.MIN_REASON for e in entries)


def test_the_checkov_lock_pins_checkov_and_everything_it_needs_exactly() -> None:
    pins = [line for line in scan.LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert "checkov==3.3.30" in pins
    assert all(re.match(r"^[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+$", line) for line in pins), pins
    assert len(pins) > 50  # pip freeze of the venv, not just checkov itself
    assert len({line.split("==")[0].lower() for line in pins}) == len(pins)
