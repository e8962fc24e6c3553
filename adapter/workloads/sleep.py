"""Sleep, then exit with a given code: a shell-free stand-in for a long GPU job (tests, smoke checks).

usage: sleep.py SECONDS EXIT_CODE. Writes result.json to $OUTPUT_DIR when it exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    seconds, code = float(argv[0]), int(argv[1])
    print(f"sleeping {seconds}s (pid {os.getpid()})", flush=True)
    time.sleep(seconds)
    if code != 0:
        print(f"exiting with {code} as asked", file=sys.stderr, flush=True)
        return code
    out = os.environ.get("OUTPUT_DIR")
    if out:
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump({"slept_s": seconds}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
