"""`python -m orchestrator submit|status|list|cancel|wait|serve`.

The client commands talk HTTP to the service at ORCHESTRATOR_URL with ORCHESTRATOR_TOKEN (or --url/--token).
Exit codes: 0 ok (for `wait`/`submit --wait`: the task SUCCEEDED), 1 the task ended FAILED or CANCELLED,
2 the request was refused (4xx), 3 `wait` timed out, 4 the service could not be reached or failed (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .client import Client, ServiceError

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
EXIT_OK, EXIT_TASK_FAILED, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def parse_param(raw: str) -> tuple[str, Any]:
    """`k=v`: numbers and true/false become JSON values, anything else stays a string (use --params for exact JSON)."""
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {raw!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        return key, value
    return key, parsed if isinstance(parsed, (bool, int, float)) else value


def _print_task(task: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(task, sort_keys=True) + "\n")
        return
    for key in ("task_id", "status", "type", "attempts", "result_uri", "error", "cancel_requested"):
        if task.get(key) is not None:
            out.write(f"{key}: {task[key]}\n")


def wait_for(
    client: Client,
    task_id: str,
    *,
    interval_s: float,
    timeout_s: float,
    err: TextIO,
) -> dict[str, Any] | None:
    """Polls until the task ends; shows `status attempts elapsed` (rewritten in place on a terminal, one line per
    change otherwise). Returns the final task, or None on timeout. Transient errors are retried until the timeout."""
    start = time.monotonic()
    tty = err.isatty()
    last: tuple[Any, ...] | None = None
    task: dict[str, Any] | None = None
    while True:
        elapsed = time.monotonic() - start
        try:
            task = client.get(task_id)
        except ServiceError as exc:
            if not exc.transient:
                raise
            err.write(f"{task_id} unreachable ({exc.message}), retrying\n")
        if task is not None:
            seen = (task["status"], task.get("attempts", 0), bool(task.get("cancel_requested")))
            flag = " cancel-requested" if seen[2] else ""
            line = f"{task_id} {seen[0]} attempts={seen[1]}{flag} elapsed={elapsed:.0f}s"
            if tty:
                err.write("\r\033[K" + line)
            elif seen != last:
                err.write(line + "\n")
            err.flush()
            last = seen
            if task["status"] in TERMINAL:
                if tty:
                    err.write("\n")
                return task
        if elapsed >= timeout_s:
            if tty:
                err.write("\n")
            return None
        time.sleep(min(interval_s, max(timeout_s - elapsed, 0.0)))


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:8080"))
    common.add_argument("--token", default=os.environ.get("ORCHESTRATOR_TOKEN"))
    common.add_argument("--json", action="store_true", help="machine-readable output")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    waiting.add_argument("--timeout", type=float, default=24 * 3600.0, help="give up after this many seconds")

    parser = argparse.ArgumentParser(
        prog="python -m orchestrator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", parents=[common, waiting], help="queue a task")
    p.add_argument("type")
    p.add_argument("-p", "--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE")
    p.add_argument("--params", type=json.loads, default=None, help="params as a JSON object")
    p.add_argument("--idempotency-key", default=None, help="default: a fresh random key (safe retries)")
    p.add_argument("--wait", action="store_true", help="then wait until the task ends")
    p = sub.add_parser("status", parents=[common], help="show one task")
    p.add_argument("task_id")
    p = sub.add_parser("list", parents=[common], help="tasks in a status, newest first")
    p.add_argument("--status", required=True, choices=["QUEUED", "RUNNING", *TERMINAL])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", default=None)
    p.add_argument("--all", action="store_true", help="follow the cursor to the last page")
    p = sub.add_parser("cancel", parents=[common], help="cancel a task")
    p.add_argument("task_id")
    p = sub.add_parser("wait", parents=[common, waiting], help="wait until a task ends, showing progress")
    p.add_argument("task_id")
    p = sub.add_parser("serve", help="run the service (uvicorn) from environment configuration")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--insecure-local", action="store_true", help="accept requests without a bearer token")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from .app import create_app
    from .settings import Clients, Settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env(insecure=True if args.insecure_local else None)
    uvicorn.run(create_app(settings, Clients.from_settings(settings)), host=args.host, port=args.port)
    return EXIT_OK


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = Client(args.url, args.token)
    if args.command == "submit":
        if args.params is not None and not isinstance(args.params, dict):
            err.write("error: --params must be a JSON object\n")
            return EXIT_REFUSED
        params = {**(args.params or {}), **dict(args.param)}
        task = client.submit(args.type, params, args.idempotency_key)
        if args.wait:
            if not args.json:
                err.write(f"submitted {task['task_id']}\n")
            return _finish(client, task["task_id"], args, out, err)
        _print_task(task, args.json, out)
    elif args.command == "status":
        _print_task(client.get(args.task_id), args.json, out)
    elif args.command == "cancel":
        _print_task(client.cancel(args.task_id), args.json, out)
    elif args.command == "wait":
        return _finish(client, args.task_id, args, out, err)
    elif args.command == "list":
        cursor = args.cursor
        while True:
            page = client.list(args.status, args.limit, cursor)
            for task in page["items"]:
                if args.json:
                    out.write(json.dumps(task, sort_keys=True) + "\n")
                else:
                    attempts = task.get("attempts", 0)
                    out.write(f"{task['task_id']}  {task['status']:<9}  {task['type']}  attempts={attempts}\n")
            cursor = page.get("next_cursor")
            if not args.all or not cursor:
                break
        if cursor:
            err.write(f"more: --cursor {cursor}\n")
    return EXIT_OK


def _finish(client: Client, task_id: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    task = wait_for(client, task_id, interval_s=args.interval, timeout_s=args.timeout, err=err)
    if task is None:
        err.write(f"timed out after {args.timeout:.0f}s waiting for {task_id}\n")
        return EXIT_TIMEOUT
    _print_task(task, args.json, out)
    return EXIT_OK if task["status"] == "SUCCEEDED" else EXIT_TASK_FAILED


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        return _run(args, out, err)
    except ServiceError as exc:
        err.write(f"error: {exc.message}\n")
        return EXIT_REFUSED if 400 <= exc.status < 500 else EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
