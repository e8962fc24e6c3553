"""sha256, byte count and line count of one input file; writes result.json to $OUTPUT_DIR.

usage: digest.py PATH (the adapter downloads the task's s3 input and passes its local path).
"""

from __future__ import annotations

import hashlib
import sys

from _result import write_result  # a sibling module: see _result.py


def main(argv: list[str]) -> int:
    digest = hashlib.sha256()
    size = lines = 0
    with open(argv[0], "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    result = {"sha256": digest.hexdigest(), "bytes": size, "lines": lines}
    write_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
