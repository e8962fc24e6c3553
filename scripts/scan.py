"""`make scan`: checkov on every synthesized stack of every environment, with reviewed per-resource suppressions.

checkov lives in its own virtualenv (.venv-checkov, from requirements-checkov.lock): it pins an old `packaging`
that breaks pytest, so it cannot share .venv. `--install` creates or refreshes that venv first (what `make scan`
and tests/test_scan.py run). One checkov run covers all environments (it takes many files).

checkov's terraform_json runner ignores inline `checkov:skip` comments in cdk.tf.json, and its `--baseline` is per
file and resource, so accepted findings live in security/suppressions.toml instead: one check, one stack, one
resource pattern, a reason. Exit status 1 on any failure no entry suppresses, on an entry that matches more than one
resource, and on a stale entry (one that matches no failure in an environment it applies to), so the list cannot
rot. Prints `checkov <env>: N passed, M failed, K suppressed` per environment and the same in total.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modules.layout import ENVIRONMENTS, STACK_ORDER  # noqa: E402  (plain data: no cdktf import)

VENV = ROOT / ".venv-checkov"
LOCK = ROOT / "requirements-checkov.lock"
SUPPRESSIONS = ROOT / "security" / "suppressions.toml"
DEFAULT_OUTDIR = ROOT / "build" / "scan"
CHECKOV_TIMEOUT_S = 600
_CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")
# "<type>.<construct id pattern>": a literal type, and a name that starts with a literal construct id.
_RESOURCE = re.compile(r"^(data\.)?aws_[a-z0-9_]+\.[A-Za-z0-9][A-Za-z0-9_.*-]*$")
MIN_REASON = 80


class ScanError(RuntimeError):
    """The scan could not run or its configuration is invalid (exit status 2)."""


@dataclass(frozen=True)
class Finding:
    environment: str
    stack: str
    check_id: str
    check_name: str
    address: str  # "<type>.<name>", as in the stack's cdk.tf.json
    passed: bool

    def describe(self) -> str:
        return f"{self.environment:8} {self.stack:27} {self.check_id:12} {self.address}  ({self.check_name})"


@dataclass(frozen=True)
class Suppression:
    check: str
    stack: str
    resource: str
    reason: str
    environments: tuple[str, ...] = ENVIRONMENTS

    def matches(self, finding: Finding) -> bool:
        return (
            not finding.passed
            and finding.check_id == self.check
            and finding.stack == self.stack
            and finding.environment in self.environments
            and fnmatchcase(finding.address, self.resource)
        )

    def describe(self) -> str:
        return f"{self.check} {self.stack} {self.resource}"


@dataclass
class Outcome:
    passed: dict[str, int] = field(default_factory=dict)
    failed: list[Finding] = field(default_factory=list)
    suppressed: list[tuple[Finding, Suppression]] = field(default_factory=list)
    stale: list[tuple[Suppression, str]] = field(default_factory=list)
    too_broad: list[tuple[Suppression, str, list[str]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.stale or self.too_broad)

    def counts(self, environment: str | None = None) -> tuple[int, int, int]:
        def mine(env: str) -> bool:
            return environment is None or env == environment

        return (
            sum(n for env, n in self.passed.items() if mine(env)),
            sum(1 for f in self.failed if mine(f.environment)),
            sum(1 for f, _ in self.suppressed if mine(f.environment)),
        )


def load_suppressions(path: Path) -> list[Suppression]:
    """Read and validate the suppression list: every entry one check, one known stack, one resource, a reason."""
    raw = tomllib.loads(path.read_text()).get("suppression", [])
    entries: list[Suppression] = []
    for i, item in enumerate(raw, 1):
        where = f"{path.name} entry {i}"
        unknown = set(item) - {"check", "stack", "resource", "reason", "environments"}
        if unknown:
            raise ScanError(f"{where}: unknown key(s) {sorted(unknown)}")
        reason = " ".join(str(item.get("reason", "")).split())
        entry = Suppression(
            check=str(item.get("check", "")),
            stack=str(item.get("stack", "")),
            resource=str(item.get("resource", "")),
            reason=reason,
            environments=tuple(item.get("environments", ENVIRONMENTS)),
        )
        if not _CHECK_ID.match(entry.check):
            raise ScanError(f"{where}: check {entry.check!r} is not a checkov check id")
        if entry.stack not in STACK_ORDER:
            raise ScanError(f"{where}: stack {entry.stack!r} is not one of {', '.join(STACK_ORDER)}")
        if not _RESOURCE.match(entry.resource):
            raise ScanError(f"{where}: resource {entry.resource!r} must be '<aws type>.<construct id>[*]'")
        if len(entry.reason) < MIN_REASON:
            raise ScanError(
                f"{where} ({entry.describe()}): write a reason a reviewer can judge (at least {MIN_REASON} characters)"
            )
        if not entry.environments or set(entry.environments) - set(ENVIRONMENTS):
            raise ScanError(f"{where}: environments must be a non-empty subset of {', '.join(ENVIRONMENTS)}")
        if any((e.check, e.stack, e.resource) == (entry.check, entry.stack, entry.resource) for e in entries):
            raise ScanError(f"{where}: duplicate of an earlier entry ({entry.describe()})")
        entries.append(entry)
    return entries


def stack_files(synthesized: Mapping[str, Path]) -> dict[Path, tuple[str, str]]:
    """cdk.tf.json path -> (environment, stack) for every stack of every synthesized environment."""
    files: dict[Path, tuple[str, str]] = {}
    for environment, outdir in synthesized.items():
        found = sorted(Path(outdir).resolve().glob("stacks/*/cdk.tf.json"))
        if not found:
            raise ScanError(f"{environment}: no stacks under {outdir}/stacks")
        files.update({path: (environment, path.parent.name) for path in found})
    return files


def findings_from_report(report: Any, files: Mapping[Path, tuple[str, str]]) -> list[Finding]:
    """Flatten checkov's JSON report into findings with "<type>.<name>" addresses.

    The terraform_json runner names some resources "resource.<name>" without their type; the type is looked up in
    the stack file, where cdktf's names are unique.
    """
    reports = report if isinstance(report, list) else [report]
    types: dict[Path, dict[str, str]] = {}
    findings: list[Finding] = []
    for rep in reports:
        results = rep.get("results", {})
        if results.get("parsing_errors"):
            raise ScanError(f"checkov could not parse: {results['parsing_errors']}")
        for key, passed in (("passed_checks", True), ("failed_checks", False)):
            for item in results.get(key, []):
                path = Path(item["file_abs_path"]).resolve()
                if path not in files:
                    raise ScanError(f"checkov reported a file it was not given: {path}")
                if path not in types:
                    doc = json.loads(path.read_text())
                    types[path] = {name: rtype for rtype, items in doc.get("resource", {}).items() for name in items}
                    # Data sources: checkov names them "data.<name>"; the address is "data.<type>.<name>".
                    types[path] |= {
                        f"data.{name}": f"data.{rtype}"
                        for rtype, items in doc.get("data", {}).items()
                        for name in items
                    }
                address = item["resource"]
                if address.startswith("resource.") and address[len("resource.") :] in types[path]:
                    name = address[len("resource.") :]
                    address = f"{types[path][name]}.{name}"
                elif address.startswith("data.") and address in types[path]:
                    address = f"{types[path][address]}.{address[len('data.') :]}"
                environment, stack = files[path]
                findings.append(
                    Finding(environment, stack, item["check_id"], item.get("check_name", ""), address, passed)
                )
    return findings


def evaluate(findings: Iterable[Finding], suppressions: Sequence[Suppression], environments: Iterable[str]) -> Outcome:
    """Sort failures into suppressed and not; flag entries that match nothing, or more than one resource."""
    outcome = Outcome(passed={env: 0 for env in environments})
    matched: dict[tuple[int, str], set[str]] = {}
    for finding in findings:
        if finding.passed:
            outcome.passed[finding.environment] = outcome.passed.get(finding.environment, 0) + 1
            continue
        hits = [i for i, s in enumerate(suppressions) if s.matches(finding)]
        for i in hits:
            matched.setdefault((i, finding.environment), set()).add(finding.address)
        if hits:
            outcome.suppressed.append((finding, suppressions[hits[0]]))
        else:
            outcome.failed.append(finding)
    for i, entry in enumerate(suppressions):
        for environment in outcome.passed:
            if environment not in entry.environments:
                continue
            addresses = sorted(matched.get((i, environment), set()))
            if not addresses:
                outcome.stale.append((entry, environment))
            elif len(addresses) > 1:
                outcome.too_broad.append((entry, environment, addresses))
    return outcome


def report_lines(outcome: Outcome, *, verbose: bool = False) -> list[str]:
    lines = [f"FAILED  {f.describe()}" for f in outcome.failed]
    lines += [
        f"STALE   suppression {s.describe()} matches no failure in {env}: fix or delete it" for s, env in outcome.stale
    ]
    lines += [
        f"BROAD   suppression {s.describe()} matches {len(a)} resources in {env}: {', '.join(a)}"
        for s, env, a in outcome.too_broad
    ]
    if verbose:
        lines += [f"skip    {f.describe()}\n        reason: {s.reason}" for f, s in outcome.suppressed]
    for environment in outcome.passed:
        passed, failed, suppressed = outcome.counts(environment)
        lines.append(f"checkov {environment}: {passed} passed, {failed} failed, {suppressed} suppressed")
    passed, failed, suppressed = outcome.counts()
    lines.append(f"checkov: {passed} passed, {failed} failed, {suppressed} suppressed")
    return lines


# -- the checkov virtualenv and run -------------------------------------------------------------------------------


def lock_digest(lock: Path = LOCK) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def install(venv: Path = VENV, lock: Path = LOCK) -> None:
    """Create or refresh checkov's venv from the lock file; a no-op when it already matches the lock."""
    stamp = venv / ".lock-sha256"
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == lock_digest(lock):
        return
    print(f"installing checkov into {venv.name} from {lock.name} ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-deps: the lock lists every package (pip freeze), so exactly it is installed; `pip check` proves it whole.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "-r", str(lock)],
        check=True,
    )
    subprocess.run([str(python), "-m", "pip", "check", "--disable-pip-version-check"], check=True)
    stamp.write_text(lock_digest(lock) + "\n")


def run_checkov(files: Iterable[Path], checkov: Path) -> Any:
    if not checkov.exists():
        raise ScanError(f"{checkov} is missing: run `make scan` (or scripts/scan.py --install)")
    command = [
        str(checkov),
        "--framework",
        "terraform_json",
        "--skip-download",
        "--output",
        "json",
        "--file",
        *(str(p) for p in sorted(files)),
    ]
    env = {**os.environ, "ANSI_COLORS_DISABLED": "1", "LOG_LEVEL": "WARNING"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHECKOV_TIMEOUT_S, env=env, cwd=ROOT)
    if done.returncode not in (0, 1):  # 1: some check failed, which is ours to judge
        raise ScanError(f"checkov exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise ScanError(
            f"checkov printed no JSON report ({err}): {done.stdout[:500]!r} {done.stderr[-1000:]!r}"
        ) from err


def synthesize(environments: Iterable[str], outdir: Path) -> dict[str, Path]:
    """Each environment into <outdir>/<env>, the remote ones with the golden stand-in inputs (as `make golden`)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from scripts.synth import GOLDEN_INPUTS
    from scripts.synth import synthesize as synth_one

    return {env: synth_one(env, outdir / env, GOLDEN_INPUTS.get(env)) for env in environments}


def _pair(text: str) -> tuple[str, Path]:
    environment, sep, directory = text.partition("=")
    if not sep or environment not in ENVIRONMENTS:
        raise argparse.ArgumentTypeError(f"expected ENV=DIR with ENV one of {', '.join(ENVIRONMENTS)}, got {text!r}")
    return environment, Path(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--install", action="store_true", help="create/refresh .venv-checkov from the lock first")
    parser.add_argument("--env", action="append", choices=ENVIRONMENTS, help="scan only these (default: all four)")
    parser.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR, help="where to synthesize (default build/scan)")
    parser.add_argument(
        "--synthesized",
        action="append",
        type=_pair,
        metavar="ENV=DIR",
        help="scan this already synthesized environment instead of synthesizing it",
    )
    parser.add_argument("--suppressions", type=Path, default=SUPPRESSIONS)
    parser.add_argument("--checkov", type=Path, default=VENV / "bin" / "checkov")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list each suppressed finding and reason")
    args = parser.parse_args(argv)
    try:
        suppressions = load_suppressions(args.suppressions)
        if args.install:
            install()
        given = dict(args.synthesized or [])
        wanted = [e for e in ENVIRONMENTS if e in (args.env or given or ENVIRONMENTS)]
        synthesized = {**synthesize([e for e in wanted if e not in given], args.outdir.resolve()), **given}
        files = stack_files({e: synthesized[e] for e in wanted})
        started = time.monotonic()
        report = run_checkov(files, args.checkov)
        elapsed = time.monotonic() - started
        outcome = evaluate(findings_from_report(report, files), suppressions, wanted)
    except ScanError as err:
        print(f"scan error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(outcome, verbose=args.verbose)))
    print(f"(one checkov run over {len(files)} stack files of {len(wanted)} environment(s): {elapsed:.1f} s)")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
