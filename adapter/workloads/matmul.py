"""Multiply two random size x size matrices `repeat` times and report how long it took and on what device.

Uses torch on CUDA when torch imports and a GPU is visible (the GPU AMI case), else pure Python (any machine,
including CI: slow, so keep `size` small there). Writes result.json to $OUTPUT_DIR; prints the same to stdout.
usage: matmul.py --size N --repeat R
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from _result import torch_cuda, write_result  # a sibling module: see _result.py


def run_torch(torch: Any, size: int, repeat: int) -> dict[str, Any]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.rand((size, size), device="cuda", generator=gen)
    b = torch.rand((size, size), device="cuda", generator=gen)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        c = a @ b
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"device": f"cuda:{torch.cuda.get_device_name(0)}", "elapsed_s": elapsed, "checksum": float(c.sum().item())}


def run_python(size: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(0)
    a = [[rng.random() for _ in range(size)] for _ in range(size)]
    b = [[rng.random() for _ in range(size)] for _ in range(size)]
    cols = list(zip(*b, strict=True))
    start = time.perf_counter()
    for _ in range(repeat):
        c = [[sum(x * y for x, y in zip(row, col, strict=True)) for col in cols] for row in a]
    elapsed = time.perf_counter() - start
    return {"device": "cpu:python", "elapsed_s": elapsed, "checksum": sum(map(sum, c))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    torch = torch_cuda()
    result = run_torch(torch, args.size, args.repeat) if torch else run_python(args.size, args.repeat)
    flops = 2.0 * args.size**3 * args.repeat
    result.update(
        size=args.size,
        repeat=args.repeat,
        gflops=flops / result["elapsed_s"] / 1e9 if result["elapsed_s"] > 0 else None,
    )
    write_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
