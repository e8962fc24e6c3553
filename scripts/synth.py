"""Synthesize environments in-process (one import of the provider for all of them).

Used by the tests' session fixture, the golden refresh (`make golden`) and bench/synth.py. `main.py` stays the
app the cdktf CLI runs; this only calls its `compose`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN_DIR = ROOT / "tests" / "golden"
# Review fixtures, not real accounts or instances: the remote environments ship without them (ops set their own),
# so the golden files are synthesized with these stand-ins, in the documentation range of account ids.
GOLDEN_INPUTS: dict[str, dict[str, str]] = json.loads((GOLDEN_DIR / "inputs.json").read_text())
from modules.layout import ENVIRONMENTS  # noqa: E402  (plain data: no cdktf import)

__all__ = ["ENVIRONMENTS", "GOLDEN_DIR", "GOLDEN_INPUTS", "refresh_golden", "stacks_document", "synthesize"]


def synthesize(environment: str, outdir: Path, overrides: Mapping[str, str] | None = None) -> Path:
    from cdktf import App

    import main
    from modules.config import load_config

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_DEFAULT_", "CDK_CONTEXT_"))}
    env.update(overrides or {})
    config = load_config(environment, env=env)
    outdir.mkdir(parents=True, exist_ok=True)
    app = App(outdir=str(outdir))
    main.compose(app, config)
    app.synth()
    return outdir


def stacks_document(outdir: Path) -> str:
    """All stacks of one synthesized environment as one stable JSON document (the golden file's content)."""
    doc = {p.parent.name: json.loads(p.read_text()) for p in sorted((outdir / "stacks").glob("*/cdk.tf.json"))}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def refresh_golden(tmp: Path) -> None:
    for environment in ENVIRONMENTS:
        out = synthesize(environment, tmp / environment, GOLDEN_INPUTS.get(environment))
        (GOLDEN_DIR / f"{environment}.json").write_text(stacks_document(out))
        print(f"wrote tests/golden/{environment}.json")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Refresh tests/golden, or synthesize one environment somewhere.")
    parser.add_argument("--env", help="synthesize only this environment (with its golden inputs) into --outdir")
    parser.add_argument("--outdir", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    if args.env:
        if args.outdir is None:
            parser.error("--env needs --outdir")
        synthesize(args.env, args.outdir, GOLDEN_INPUTS.get(args.env))
        return 0
    with tempfile.TemporaryDirectory() as tmpdir:
        refresh_golden(Path(tmpdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
