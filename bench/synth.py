"""Synth speed, measured in one run on one machine against a floor: a one-resource CDKTF synth (one process: cdktf,
the AWS provider's submodule for one SQS queue, one stack). Beside it: our `make synth` path (every stack, only the
provider submodules we use) on a warm dependency-layer cache, the same on a cold one (build/layers moved aside, and
put back afterwards), and the same through the stock `import cdktf_cdktf_provider_aws`.

    .venv/bin/python bench/synth.py [--repeat 3] [--env local]

Prints each time (best of --repeat) in seconds and as a ratio to the floor; the floor and the warm synth are run in
turns, so drift on a shared machine moves both alike. The synthesized trees are compared
byte for byte: warm against stock (the provider import path changes nothing) and warm against cold (a layer built
afresh is the cached one). A cold repeat runs pip against the package index (modules/layer.py).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER_CACHE = ROOT / "build" / "layers"  # modules/layer.py CACHE_DIR; not imported: that would load cdktf here
ENV = {
    **os.environ,
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    "PYTHONPATH": str(ROOT),
}
# The floor: the least a CDKTF synth costs here (node and jsii start, cdktf loads, one resource is written).
FLOOR = """
import sys
import modules  # registers the provider package without its eager __init__, as main.py does
from cdktf import App, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider
from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
app = App(outdir=sys.argv[1])
stack = TerraformStack(app, "floor")
AwsProvider(stack, "aws", region="us-east-1")
SqsQueue(stack, "queue", name="floor")
app.synth()
"""


def timed(cmd: list[str], env: dict[str, str], before: Callable[[], None] = lambda: None) -> float:
    before()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def best(cmd: list[str], env: dict[str, str], repeat: int, before: Callable[[], None] = lambda: None) -> float:
    return min(timed(cmd, env, before) for _ in range(repeat))


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@contextmanager
def layer_cache_aside(parking: Path) -> Iterator[Callable[[], None]]:
    """Moves build/layers into `parking` and yields what empties the cache before each cold run; the original cache
    comes back whatever happens (the cold runs' zips are this bench's own and are dropped)."""
    parked = parking / "layers"
    had_cache = LAYER_CACHE.exists()
    if had_cache:
        shutil.move(str(LAYER_CACHE), parked)

    def empty() -> None:
        shutil.rmtree(LAYER_CACHE, ignore_errors=True)

    try:
        yield empty
    finally:
        empty()
        if had_cache:
            shutil.move(str(parked), LAYER_CACHE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: Path(tmp) / name for name in ("floor", "warm", "cold", "stock")}
        synth = [sys.executable, "main.py"]
        env = {**ENV, "ENV": args.env}
        floor_cmd = [sys.executable, "-c", FLOOR, str(out["floor"])]
        warm_env = {**env, "CDKTF_OUTDIR": str(out["warm"])}
        subprocess.run(synth, cwd=ROOT, env=warm_env, check=True, stdout=subprocess.DEVNULL)  # warms the cache
        # Floor and warm synth alternate, so a machine that slows down or speeds up meanwhile moves both alike.
        pairs = [(timed(floor_cmd, ENV), timed(synth, warm_env)) for _ in range(args.repeat)]
        floor, warm = min(f for f, _ in pairs), min(w for _, w in pairs)
        with layer_cache_aside(Path(tmp)) as empty_cache:
            cold = best(synth, {**env, "CDKTF_OUTDIR": str(out["cold"])}, args.repeat, before=empty_cache)
        stock = best(
            synth, {**env, "CDKTF_OUTDIR": str(out["stock"]), "GPU_ORCH_STOCK_PROVIDER_IMPORT": "1"}, args.repeat
        )
        identical_stock = same_tree(out["warm"], out["stock"])
        identical_cold = same_tree(out["warm"], out["cold"])
    print(f"environment {args.env}, best of {args.repeat}; ratio = time / floor")
    for label, seconds in (
        ("floor: one-resource CDKTF synth", floor),
        ("make synth path, warm layer cache", warm),
        ("make synth path, cold layer cache", cold),
        ("synth through the stock provider import", stock),
    ):
        print(f"  {label:<42} {seconds:6.2f} s  {seconds / floor:5.2f}x")
    print(f"  synthesized output byte-identical, warm vs stock import: {identical_stock}")
    print(f"  synthesized output byte-identical, warm vs cold cache:   {identical_cold}")
    return 0 if identical_stock and identical_cold else 1


if __name__ == "__main__":
    sys.exit(main())
