"""`python -m canvas [serve]`: the service on CANVAS_HOST:CANVAS_PORT (default 127.0.0.1:9000);
`python -m canvas reconcile`: one reconcile pass, its report printed as JSON.

Settings are read and checked first (canvas/settings.py); a bad one stops the start with one line naming it and
exit status 2. The migrations are applied before the first request is served.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from core.contract import SettingError

from .settings import Settings

if TYPE_CHECKING:
    from .app import Deps
    from .reconcile import Report


@contextmanager
def built(settings: Settings) -> Iterator[tuple[Deps, Callable[[], Report]]]:
    """The app's parts from the settings, with its pool open and the schema migrated; closed on exit."""
    import boto3
    from botocore.config import Config

    from orchestrator.client import Client, SigV4Signer

    from .app import Deps
    from .auth import JwksCache, Verifier
    from .db import Repo, migrate, open_pool
    from .reconcile import run_once
    from .storage import Storage
    from .tasks import ImageTasks, ImageTypes
    from .uploads import Images, Limits

    pool = open_pool(settings.database_url, max_size=settings.pool_max)
    try:
        with pool.connection() as conn:
            migrate(conn)
        # SigV4 for presigned URLs: what every region accepts. AWS_ENDPOINT_URL (local AWS) is honoured by boto3.
        s3 = boto3.session.Session(region_name=settings.region).client("s3", config=Config(signature_version="s3v4"))
        repo = Repo(pool)
        storage = Storage(s3=s3, bucket=settings.bucket, prefix=settings.prefix, url_expires_s=settings.url_expires_s)
        signer = None if settings.orchestrator_token else SigV4Signer.from_environment(settings.region)
        client = Client(settings.orchestrator_url, settings.orchestrator_token, timeout_s=15, signer=signer)
        tasks = ImageTasks(repo, client, ImageTypes(client))
        limits = Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_direct_bytes=settings.max_direct_bytes,
            max_pixels=settings.max_pixels,
        )
        verifier = Verifier(
            issuer=settings.issuer,
            audience=settings.jwt_audience,
            jwks=JwksCache(settings.jwks_url, max_age_s=settings.jwks_cache_s),
            secret=settings.jwt_secret,
        )

        def reconcile() -> Report:
            return run_once(repo, storage, tasks, pending_ttl_s=settings.pending_ttl_s)

        deps = Deps(
            verifier=verifier,
            images=Images(repo, storage, limits),
            tasks=tasks,
            reconcile=reconcile,
            reconcile_every_s=settings.reconcile_every_s,
        )
        yield deps, reconcile
    finally:
        pool.close()


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canvas", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "reconcile"))
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(env)
    except SettingError as err:
        print(f"canvas: setting {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with built(settings) as (deps, reconcile):
        if args.command == "reconcile":
            report = reconcile()
            print(json.dumps(dataclasses.asdict(report)))
            return 0
        import uvicorn

        from .app import create_app

        # httptools and uvloop (pinned beside uvicorn): the C HTTP parser and event loop took about a tenth off the
        # service's CPU time per 4 MB upload (bench/canvas.py's setup, paired runs).
        uvicorn.run(
            create_app(deps), host=settings.host, port=settings.port, log_level="info", http="httptools", loop="uvloop"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
