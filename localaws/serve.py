"""`python -m localaws serve`: the local AWS built from the synthesized stacks, kept up until Ctrl-C or SIGTERM.

Synthesizes the `local` environment first when cdktf.out/local is missing or older than the code it is made from,
builds every resource the stacks declare in a moto server on 127.0.0.1 (never another interface: it takes any
credentials), prints the endpoint, the resource names and the `export` lines a program needs to use it, and serves
until interrupted or, with `--for SECONDS`, at most that long.

    python -m localaws serve [--for SECONDS] [--port PORT] [--outdir cdktf.out/local]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modules.layout import ALARM, LAMBDA, STACK_ORDER

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTDIR = ROOT / "cdktf.out" / "local"
# What the synthesized JSON is made from: the app, its settings, its constructs, and the packages zipped into assets
# (the Lambda's code and the adapter bundle), whose hashes are in the JSON.
SYNTH_INPUTS = ("main.py", "environments.toml", "cdktf.json", "modules", "core", "functions", "adapter")
_SKIPPED = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _files(root: Path, names: Iterable[str]) -> Iterable[Path]:
    for name in names:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if d not in _SKIPPED]
                yield from (Path(dirpath) / f for f in filenames if not f.endswith((".pyc", ".pyo")))


def stale_reason(outdir: Path, *, root: Path = ROOT, inputs: Iterable[str] = SYNTH_INPUTS) -> str | None:
    """Why `outdir` must be synthesized again (None: it is up to date): a stack is missing, or a source file is
    newer than the oldest synthesized stack."""
    stacks = [outdir / "stacks" / name / "cdk.tf.json" for name in STACK_ORDER]
    missing = [p.parent.name for p in stacks if not p.is_file()]
    if missing:
        return f"no synthesized {', '.join(missing)} under {outdir}"
    synthesized_at = min(p.stat().st_mtime for p in stacks)
    newer = next((p for p in _files(root, inputs) if p.stat().st_mtime > synthesized_at), None)
    return f"{newer.relative_to(root)} changed since the last synth" if newer else None


def ensure_synthesized(outdir: Path) -> str:
    """Synthesize the `local` environment into `outdir` unless it is up to date; says which it was."""
    reason = stale_reason(outdir)
    if reason is None:
        return "up to date"
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    print(f"synthesizing the `local` environment ({reason})", flush=True)
    from scripts.synth import synthesize

    synthesize("local", outdir)
    return "synthesized now"


def exports(env: Mapping[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def describe(local: Any, outdir: Path, how: str) -> list[str]:
    """The endpoint, what the stacks created there, and the environment that points a program at it."""
    stand_ins = ", ".join(f"{new} (for {old})" for old, new in local.instance_id_map.items())
    client_env = local.env()
    adapter_env = local.adapter_env(ROOT / "build" / "serve" / "adapter")
    adapter_only = {k: v for k, v in adapter_env.items() if k not in client_env}
    return [
        f"local AWS (moto) at {local.endpoint_url}, on 127.0.0.1 only",
        f"  built from {outdir / 'stacks'} ({how})",
        f"  task queue      {local.queue_url}",
        f"  dead letters    {local.dlq_url}",
        f"  task table      {local.table_name} (index {local.status_index})",
        f"  bucket          {local.bucket}",
        f"  GPU instances   {stand_ins}, stopped",
        f"  shutdown Lambda {local.outputs[LAMBDA]['FunctionName']}",
        f"  idle alarm      {local.outputs[ALARM]['AlarmName']}",
        "",
        "# any program (boto3 reads AWS_ENDPOINT_URL; the names are the runtime contract's, core/contract.py):",
        *exports(client_env),
        "# and for `python -m adapter` (from the repository root):",
        *exports(adapter_only),
        "# and for `python -m orchestrator serve`: export ORCHESTRATOR_TOKEN=<a secret of yours>",
    ]


def serve(outdir: Path, *, port: int, for_s: float | None, stop: threading.Event) -> int:
    import localaws
    from localaws.server import moto_server

    how = ensure_synthesized(outdir)
    if stop.is_set():  # interrupted during the synth: nothing is running yet
        return 0
    with moto_server(port=port) as endpoint:
        local = localaws.build(outdir, endpoint)
        print("\n".join(describe(local, outdir, how)), flush=True)
        bound = "" if for_s is None else f", or for {for_s:g} s"
        print(f"serving until Ctrl-C or SIGTERM{bound}", flush=True)
        interrupted = stop.wait(for_s)
        print("stopping (signal)" if interrupted else f"stopping ({for_s:g} s are up)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localaws serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--for", dest="for_s", type=float, default=None, metavar="SECONDS", help="stop after this")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR, help="synthesized `local` environment")
    args = parser.parse_args(argv)
    if args.for_s is not None and args.for_s <= 0:
        parser.error("--for needs a positive number of seconds")
    # Set before the (slow) synth and build, so a signal at any point still ends in a clean stop of the server.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return serve(args.outdir, port=args.port, for_s=args.for_s, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
