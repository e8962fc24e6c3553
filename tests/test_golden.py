"""The synthesized infrastructure of every environment is committed (tests/golden/<env>.json), so a reviewer sees
each change to it in the diff. This fails on drift; `make golden` refreshes the files after an intended change."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.synth import ENVIRONMENTS, GOLDEN_DIR, ROOT, stacks_document


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_synthesized_matches_golden(synthesized: Any, environment: str) -> None:
    actual = stacks_document(synthesized(environment))
    expected = (GOLDEN_DIR / f"{environment}.json").read_text()
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    expected.splitlines(True), actual.splitlines(True), f"golden/{environment}.json", "synthesized", n=2
                )
            )[:60]
        )
        pytest.fail(f"synthesized {environment} differs from tests/golden (run `make golden` if intended):\n{diff}")


def test_stock_provider_import_gives_byte_identical_json(synthesized: Any, tmp_path: Path) -> None:
    """The fast path (registering the provider package without its eager __init__) changes nothing in the output."""
    env = {**os.environ, "GPU_ORCH_STOCK_PROVIDER_IMPORT": "1", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    stock = tmp_path / "stock"
    subprocess.run(
        [sys.executable, "scripts/synth.py", "--env", "local", "--outdir", str(stock)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    fast = synthesized("local")
    stock_files = sorted(p.relative_to(stock) for p in stock.rglob("*") if p.is_file())
    fast_files = sorted(p.relative_to(fast) for p in fast.rglob("*") if p.is_file())
    assert stock_files == fast_files
    for rel in stock_files:
        assert (stock / rel).read_bytes() == (fast / rel).read_bytes(), rel
