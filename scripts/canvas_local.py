"""`make canvas`: the canvas service on this machine with everything it needs, no Docker and no Supabase account.

Starts, all on 127.0.0.1 and all stopped on Ctrl-C, SIGTERM or after --for seconds:
- a local PostgreSQL (canvas.localpg: a temp dir, a unix socket, no TCP), the canvas database migrated in it;
- the local AWS (moto) built from the synthesized `local` stacks: the artifacts bucket the images go to;
- the orchestrator app (bearer-token mode) and one adapter process on its queue, so image tasks really run;
- a development Auth (canvas.devauth): an ES256 key whose JWKS it serves, standing in for the Supabase project;
- the canvas service on --port (default 9000, CANVAS_PORT's default),
and prints a ready token for one user and a curl example.

    python scripts/canvas_local.py [--port 9000] [--for SECONDS] [--no-adapter]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import sys
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def orchestrator_app(local: Any, token: str) -> Any:
    """The real orchestrator app in bearer-token mode over the local AWS: its clients made by its own
    Clients.from_settings, with boto3 pointed at the local AWS (AWS_ENDPOINT_URL, read when a client is made)."""
    from modules.layout import LAMBDA
    from orchestrator.app import create_app
    from orchestrator.settings import Clients, Settings

    env = {
        "CONTROLLER_FUNCTION_NAME": local.outputs[LAMBDA]["FunctionName"],
        **local.env(),
        "ORCHESTRATOR_TOKEN": token,
    }
    settings = Settings.from_env(env)
    saved = {name: os.environ.get(name) for name in local.env()}
    os.environ.update(local.env())
    try:
        clients = Clients.from_settings(settings)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return create_app(settings, clients)


def start_adapter(stack: ExitStack, local: Any, work: Path) -> None:
    env = {**os.environ, **local.adapter_env(work / "adapter"), "PYTHONPATH": str(ROOT), "WAIT_TIME_SECONDS": "1"}
    env["IDLE_WINDOW_SECONDS"] = "0"  # nothing here to power off
    from localaws.server import background

    argv = [sys.executable, "-m", "adapter"]
    stack.enter_context(background(argv, env=env, log_path=work / "adapter.log", stop_s=15))


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    import localaws
    from canvas.__main__ import built
    from canvas.app import create_app
    from canvas.devauth import serve_dev_auth
    from canvas.localpg import local_postgres
    from canvas.settings import Settings
    from localaws.serve import DEFAULT_OUTDIR, ensure_synthesized
    from localaws.server import moto_server
    from orchestrator.server import serve_in_thread

    work = ROOT / "build" / "canvas"
    work.mkdir(parents=True, exist_ok=True)
    ensure_synthesized(DEFAULT_OUTDIR)
    with ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        local = localaws.build(DEFAULT_OUTDIR, endpoint)
        os.environ.update(local.env())  # this process's boto3 clients (the canvas's S3) use the local AWS
        pg = stack.enter_context(local_postgres())
        database_url = pg.create_database("canvas")
        auth = stack.enter_context(serve_dev_auth())
        orchestrator_token = secrets.token_urlsafe(24)
        orchestrator_url = stack.enter_context(serve_in_thread(orchestrator_app(local, orchestrator_token)))
        if not args.no_adapter:
            start_adapter(stack, local, work)
        env = {
            **local.env(),
            "SUPABASE_URL": auth.url,
            "DATABASE_URL": database_url,
            "S3_BUCKET": local.bucket,
            "ORCHESTRATOR_URL": orchestrator_url,
            "ORCHESTRATOR_TOKEN": orchestrator_token,
            "CANVAS_PORT": str(args.port),
        }
        settings = Settings.from_env(env)
        deps, _ = stack.enter_context(built(settings))
        url = stack.enter_context(serve_in_thread(create_app(deps), port=settings.port))
        user = str(uuid.uuid4())
        token = auth.token(user, exp_in=24 * 3600)
        print("\n".join(describe(url, token, user, settings, local, work)), flush=True)
        stop.wait(args.for_s)
        print("stopping", flush=True)
    return 0


TASK_BODY = '{"type": "thumbnail", "params": {"size": 128}}'


def describe(url: str, token: str, user: str, settings: Any, local: Any, work: Path) -> list[str]:
    return [
        f"canvas at {url} (open it in a browser and paste the token)",
        f"  database    {settings.database_url}",
        f"  images      s3://{settings.bucket}/{settings.prefix}<user>/  (local AWS at {local.endpoint_url})",
        f"  orchestrator {settings.orchestrator_url}; adapter log {work / 'adapter.log'}",
        f"  dev Auth    {settings.jwks_url}",
        "",
        f"a token for user {user} (valid 24 h):",
        f"export CANVAS_TOKEN={token}",
        "",
        "curl examples:",
        f'  curl -s -H "Authorization: Bearer $CANVAS_TOKEN" -F file=@picture.png {url}/images',
        f'  curl -s -H "Authorization: Bearer $CANVAS_TOKEN" {url}/images',
        f"  curl -s -H \"Authorization: Bearer $CANVAS_TOKEN\" -H 'Content-Type: application/json' "
        f"-d {shlex.quote(TASK_BODY)} {url}/images/<id>/tasks",
        "",
        "Ctrl-C stops everything",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--for", dest="for_s", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--no-adapter", action="store_true", help="do not run tasks (no adapter process)")
    args = parser.parse_args(argv)
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run(args, stop)


if __name__ == "__main__":
    sys.exit(main())
