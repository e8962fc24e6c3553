"""Synth speed: our `make synth` path (one process, only the provider submodules we use) beside the stock
`import cdktf_cdktf_provider_aws` alone, measured in the same run on the same machine.

    .venv/bin/python bench/synth.py [--repeat 3] [--env local]

Prints each time (best of --repeat) and the ratio; the synthesized JSON of both paths is compared too.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    "PYTHONPATH": str(ROOT),
}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def best(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    return min(timed(cmd, env) for _ in range(repeat))


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fast_out, stock_out = Path(tmp) / "fast", Path(tmp) / "stock"
        synth = [sys.executable, "main.py"]
        fast = best(synth, {**ENV, "ENV": args.env, "CDKTF_OUTDIR": str(fast_out)}, args.repeat)
        stock_synth = best(
            synth,
            {**ENV, "ENV": args.env, "CDKTF_OUTDIR": str(stock_out), "GPU_ORCH_STOCK_PROVIDER_IMPORT": "1"},
            args.repeat,
        )
        import_only = best([sys.executable, "-c", "import cdktf_cdktf_provider_aws"], ENV, args.repeat)
        identical = same_tree(fast_out, stock_out)
    print(f"environment {args.env}, best of {args.repeat}")
    print(f"  make synth path (all 6 stacks, one process, used submodules only): {fast:6.2f} s")
    print(f"  stock `import cdktf_cdktf_provider_aws` alone:                      {import_only:6.2f} s")
    print(f"  synth through the stock import:                                    {stock_synth:6.2f} s")
    print(f"  ratio synth / stock import alone: {fast / import_only:.2f}  (below 1.00 = faster)")
    print(f"  ratio synth / stock synth:        {fast / stock_synth:.2f}")
    print(f"  synthesized output byte-identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
