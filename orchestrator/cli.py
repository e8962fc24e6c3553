"""`gpuq` (also `python -m orchestrator`): submit, wait, status, list, cancel, results, logs, types, cost, configure,
serve.

Where the service is: --url, else ORCHESTRATOR_URL, else the config file `gpuq configure` writes ($GPUQ_CONFIG or
~/.config/gpuq/config.toml), else http://127.0.0.1:8080. How to call it: bearer mode sends ORCHESTRATOR_TOKEN (or
--token); IAM mode (--auth iam, ORCHESTRATOR_AUTH=iam, the config's `auth`, or any Lambda function URL) signs each
request with your own AWS credentials (SigV4, service lambda).
Exit codes: 0 ok (for `wait`/`submit --wait`: the task SUCCEEDED), 1 the task ended FAILED or CANCELLED,
2 the request was refused (4xx) or cannot be made here (config, credentials, files), 3 `wait` timed out,
4 the service or S3 could not be reached or failed (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from core import contract as c
from core.contract import SettingError
from core.webhook import WebhookRefused, check_url

from . import cliconfig, cliprint
from .client import Client, ServiceError, SetupError, SigV4Signer, TransferError, lambda_url_region

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
STATUSES = ("QUEUED", "RUNNING", *TERMINAL)
DEFAULT_URL = "http://127.0.0.1:8080"
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


def parse_input(raw: str) -> tuple[str, Path]:
    key, sep, value = raw.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected PARAM=FILE, got {raw!r}")
    return key, Path(value).expanduser()


def _print_task(task: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        cliprint.as_json(task, out)
    else:
        cliprint.task(task, out)


def wait_for(
    client: Client,
    task_id: str,
    *,
    interval_s: float,
    timeout_s: float,
    err: TextIO,
) -> dict[str, Any] | None:
    """Polls until the task ends; shows `status attempts elapsed` (a live tqdm line on a terminal, one line per
    change otherwise). Returns the final task, or None on timeout. Transient errors are retried until the timeout."""
    start = time.monotonic()
    bar = _status_bar(err) if err.isatty() else None
    last: tuple[Any, ...] | None = None
    task: dict[str, Any] | None = None
    try:
        while True:
            elapsed = time.monotonic() - start
            try:
                task = client.get(task_id)
            except ServiceError as exc:
                if not exc.transient:
                    raise
                _note(bar, err, f"{task_id} unreachable ({exc.message}), retrying")
            if task is not None:
                seen = (task["status"], task.get("attempts", 0), bool(task.get("cancel_requested")))
                flag = " cancel-requested" if seen[2] else ""
                state = f"{task_id} {seen[0]} attempts={seen[1]}{flag}"
                if bar is not None:
                    bar.set_description_str(state, refresh=True)
                elif seen != last:
                    err.write(f"{state} elapsed={elapsed:.0f}s\n")
                    err.flush()
                last = seen
                if task["status"] in TERMINAL:
                    return task
            if elapsed >= timeout_s:
                return None
            time.sleep(min(interval_s, max(timeout_s - elapsed, 0.0)))
    finally:
        if bar is not None:
            bar.close()


def _status_bar(err: TextIO) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=None, file=err, bar_format="{desc} elapsed={elapsed}", leave=True)


def _note(bar: Any, err: TextIO, line: str) -> None:
    if bar is not None:
        bar.write(line, file=err)
    else:
        err.write(line + "\n")


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="the service (default: ORCHESTRATOR_URL, then the config)")
    common.add_argument("--token", default=None, help="bearer token (default: ORCHESTRATOR_TOKEN)")
    common.add_argument("--auth", choices=["token", "iam"], default=None, help="how to call the service")
    common.add_argument("--region", default=None, help="IAM mode: the region to sign for (default: the URL's)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    waiting.add_argument("--timeout", type=float, default=24 * 3600.0, help="give up after this many seconds")

    parser = argparse.ArgumentParser(
        prog="gpuq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", parents=[common, waiting], help="queue a task")
    p.add_argument("type")
    p.add_argument("-p", "--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE")
    p.add_argument("--params", type=json.loads, default=None, help="params as a JSON object")
    p.add_argument(
        "--input",
        action="append",
        type=parse_input,
        default=[],
        metavar="PARAM=FILE",
        help="upload FILE and pass its key as PARAM (a param the type marks s3_input)",
    )
    p.add_argument("--idempotency-key", default=None, help="default: a fresh random key (safe retries)")
    p.add_argument("--notify", default=None, metavar="URL", help="an https webhook told when the task ends")
    p.add_argument("--wait", action="store_true", help="then wait until the task ends")
    p.add_argument("--download", type=Path, default=None, metavar="DIR", help="wait, then fetch the results into DIR")
    p = sub.add_parser("status", parents=[common], help="show one task")
    p.add_argument("task_id")
    p = sub.add_parser("list", parents=[common], help="your tasks, newest first (every status unless --status)")
    p.add_argument("--status", default=None, choices=list(STATUSES))
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", default=None, help="next page of --status (the `more:` line's cursor)")
    p.add_argument("--all", action="store_true", help="follow the cursor to the last page")
    p = sub.add_parser("cancel", parents=[common], help="cancel a task")
    p.add_argument("task_id")
    p = sub.add_parser("wait", parents=[common, waiting], help="wait until a task ends, showing progress")
    p.add_argument("task_id")
    p = sub.add_parser("results", parents=[common], help="a task's result files (presigned URLs)")
    p.add_argument("task_id")
    p.add_argument("--download", type=Path, default=None, metavar="DIR", help="fetch them into DIR")
    p = sub.add_parser("logs", parents=[common], help="the end of a task's stdout and stderr")
    p.add_argument("task_id")
    sub.add_parser("types", parents=[common], help="the task types and their params")
    p = sub.add_parser("cost", parents=[common], help="GPU time and cost of finished tasks, and the idle overhead")
    p.add_argument("--since", default=None, help="30m, 12h, 7d or an ISO date (default: the service's, 7d)")
    p = sub.add_parser("configure", help="write the config file for an environment's service")
    p.add_argument("--env", required=True, help="the environment (dev, staging, prod)")
    p.add_argument("--url", default=None, help="the service URL (default: the api stack's Terraform outputs)")
    p.add_argument("--auth", choices=["token", "iam"], default=None, help="default: iam for a function URL")
    p.add_argument("--region", default=None)
    p.add_argument("--project", type=Path, default=Path("."), help="the checkout holding cdktf.out (default: .)")
    p.add_argument("--admin", action="store_true", help="use the admin URL (needs the admin policy; sees all tasks)")
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


def connect(args: argparse.Namespace, env: Mapping[str, str]) -> Client:
    """The client for this invocation: flags first, then the environment, then the config file. The config's
    auth and region go with its URL only, never with a URL given some other way."""
    config = cliconfig.load(cliconfig.config_path(env))
    url = args.url or c.ORCHESTRATOR_URL.read_optional(env) or config.get("url") or DEFAULT_URL
    own = config if url == config.get("url") else {}
    auth = args.auth or c.ORCHESTRATOR_AUTH.read_optional(env) or own.get("auth")
    auth = auth or ("iam" if lambda_url_region(url) else "token")
    if auth != "iam":
        return Client(url, args.token or c.ORCHESTRATOR_TOKEN.read_optional(env))
    region = (
        args.region
        or lambda_url_region(url)
        or own.get("region")
        or c.AWS_REGION.read_optional(env)
        or c.AWS_DEFAULT_REGION.read_optional(env)
        or _profile_region()
    )
    if not region:
        raise SetupError(f"no region to sign requests to {url} for: pass --region")
    return Client(url, signer=SigV4Signer.from_environment(region))


def _profile_region() -> str | None:
    import botocore.session

    region = botocore.session.Session().get_config_variable("region")
    return str(region) if region else None


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "configure":
        return _configure(args, out)
    client = connect(args, os.environ)
    if args.command == "submit":
        return _submit(client, args, out, err)
    if args.command == "status":
        _print_task(client.get(args.task_id), args.json, out)
    elif args.command == "cancel":
        _print_task(client.cancel(args.task_id), args.json, out)
    elif args.command == "wait":
        return _finish(client, args.task_id, args, out, err)
    elif args.command == "list":
        return _list(client, args, out, err)
    elif args.command == "results":
        return _results(client, args.task_id, args.download, args.json, out, err)
    elif args.command == "logs":
        _show(client.logs(args.task_id), args.json, cliprint.logs, out)
    elif args.command == "types":
        _show(client.types(), args.json, cliprint.types, out)
    elif args.command == "cost":
        _show(client.cost(args.since), args.json, cliprint.cost, out)
    return EXIT_OK


def _show(
    found: dict[str, Any], as_json: bool, readable: Callable[[dict[str, Any], TextIO], None], out: TextIO
) -> None:
    if as_json:
        cliprint.as_json(found, out)
    else:
        readable(found, out)


def _notify_url(raw: str | None) -> str | None:
    """The service decides for its environment; here only what every environment refuses is refused (loopback is
    for local environments, which allow it), so a refusal comes before anything is uploaded or sent."""
    if raw is None:
        return None
    try:
        return check_url(raw, allow_loopback=True)
    except WebhookRefused as err:
        raise SetupError(f"--notify: {err}") from None


def _submit(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.params is not None and not isinstance(args.params, dict):
        raise SetupError("--params must be a JSON object")
    params = {**(args.params or {}), **dict(args.param)}
    notify_url = _notify_url(args.notify)
    for name, path in args.input:
        if name in params:
            raise SetupError(f"{name} is given both as a param and as --input")
        if not path.is_file():
            raise SetupError(f"--input {name}={path}: no such file")
        params[name] = _upload(client, path, err, quiet=args.json)
    task = client.submit(args.type, params, args.idempotency_key, notify_url=notify_url)
    if args.wait or args.download is not None:
        if not args.json:
            err.write(f"submitted {task['task_id']}\n")
        return _finish(client, task["task_id"], args, out, err)
    _print_task(task, args.json, out)
    return EXIT_OK


def _upload(client: Client, path: Path, err: TextIO, *, quiet: bool) -> str:
    from . import transfer

    grant = client.upload_grant(path.name, path.stat().st_size)
    transfer.upload(grant, path, err)
    if not quiet:
        err.write(f"uploaded {path} as {grant['key']}\n")
    return str(grant["key"])


def _list(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.cursor and not args.status:
        raise SetupError("--cursor continues one status: give --status too")
    for status in (args.status,) if args.status else STATUSES:
        cursor = args.cursor
        while True:
            page = client.list(status, args.limit, cursor)
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
            err.write(f"more: --cursor {cursor}\n" if args.status else f"more: --status {status} --cursor {cursor}\n")
    return EXIT_OK


def _results(client: Client, task_id: str, download: Path | None, as_json: bool, out: TextIO, err: TextIO) -> int:
    listing = client.results(task_id)
    if as_json:
        out.write(json.dumps(listing, sort_keys=True) + "\n")
    else:
        for obj in listing["objects"]:
            out.write(f"{obj['name']}  {obj['size']}\n")
    if download is not None:
        _download(listing, download, err, quiet=as_json)
    elif listing.get("truncated"):
        err.write("more objects than one answer lists: only these are shown\n")
    return EXIT_OK


def _download(listing: dict[str, Any], root: Path, err: TextIO, *, quiet: bool) -> None:
    from . import transfer

    for obj in listing["objects"]:
        transfer.download(obj["url"], transfer.safe_target(root, obj["name"]), obj.get("size"), err)
    if listing.get("truncated"):
        err.write("more objects than one answer lists: only these were downloaded\n")
    if not quiet:
        err.write(f"downloaded {len(listing['objects'])} file(s) to {root}\n")


def _configure(args: argparse.Namespace, out: TextIO) -> int:
    path = cliconfig.config_path(os.environ)
    wrote = cliconfig.configure(
        args.env, url=args.url, auth=args.auth, region=args.region, project=args.project, path=path, admin=args.admin
    )
    out.write(f"wrote {path}: " + " ".join(f"{k}={v}" for k, v in wrote.items()) + "\n")
    return EXIT_OK


def _finish(client: Client, task_id: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    task = wait_for(client, task_id, interval_s=args.interval, timeout_s=args.timeout, err=err)
    if task is None:
        err.write(f"timed out after {args.timeout:.0f}s waiting for {task_id}\n")
        return EXIT_TIMEOUT
    _print_task(task, args.json, out)
    download = getattr(args, "download", None)
    if download is not None:  # whatever the outcome: a failed task's logs are kept too
        _download(client.results(task_id), download, err, quiet=args.json)
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
    except TransferError as exc:
        err.write(f"error: {exc.message}\n")
        return EXIT_REFUSED if 400 <= exc.status < 500 else EXIT_UNAVAILABLE
    except (SetupError, SettingError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
