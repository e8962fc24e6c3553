"""`python -m localaws serve [...]`: the local AWS built from the stacks, until Ctrl-C (localaws/serve.py).

`python -m localaws demo [...]` runs the end-to-end demo, as `python -m localaws.demo [...]` does.
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m localaws {serve,demo} [--help | options]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command, rest = (args[0], args[1:]) if args else ("", [])
    # Each command parses its own options; imported on demand, so `serve` never loads the orchestrator.
    if command == "serve":
        from localaws.serve import main as serve

        return serve(rest)
    if command == "demo":
        from localaws.demo import main as demo

        return demo(rest)
    print(USAGE, file=sys.stderr if command not in ("-h", "--help") else sys.stdout)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
