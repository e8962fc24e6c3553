"""Fixtures and helpers the canvas tests share (no tests of its own).

- `canvas_pg`: one PostgreSQL server per test session (canvas.localpg: initdb in a temp dir, a unix socket only),
  started on first use and stopped when the session ends; each test module gets a fresh database in it.
- `auth_server`: the JWKS endpoint of a stand-in Supabase project (canvas.devauth), a real HTTP server on 127.0.0.1
  whose keys a test can rotate, minting tokens the way Supabase Auth does (ES256 with a kid, or legacy HS256).
- `canvas_stack`: the local AWS (moto) built from the synthesized stacks, the real orchestrator app in bearer-token
  mode, and the canvas app on a fresh database, each served on 127.0.0.1 in a thread and stopped after the module.
"""

from __future__ import annotations

import io
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from canvas.devauth import DevAuth, serve_dev_auth
from canvas.localpg import LocalPostgres, local_postgres

ORCHESTRATOR_TOKEN = "canvas-tests-orchestrator-token"
HS_SECRET = "legacy-shared-secret-of-at-least-32-characters"
_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def canvas_pg(request: pytest.FixtureRequest) -> LocalPostgres:
    """One server per session, whichever module asks first (the fixture is imported into several modules)."""
    if "pg" not in _SHARED:
        stack = ExitStack()
        _SHARED["pg"] = stack.enter_context(local_postgres())
        request.addfinalizer(stack.close)
    pg: LocalPostgres = _SHARED["pg"]
    return pg


def fresh_database(pg: LocalPostgres) -> str:
    import psycopg

    from canvas.db import migrate

    url = pg.create_database("canvas_" + uuid.uuid4().hex[:12])
    with psycopg.connect(url) as conn:
        migrate(conn)
    return url


AuthServer = DevAuth  # what the fixture yields: the stand-in project's keys, JWKS fetch count, token minting


@pytest.fixture(scope="module")
def auth_server() -> Iterator[DevAuth]:
    with serve_dev_auth() as auth:
        yield auth


def token(auth: DevAuth, sub: str | None, **kw: Any) -> str:
    """An access token as Supabase Auth issues it (canvas.devauth)."""
    return auth.token(str(sub), **kw)


def hs_token(auth: DevAuth, sub: str, secret: str = HS_SECRET) -> str:
    return auth.hs256_token(sub, secret)


def png_bytes(width: int = 64, height: int = 48, *, text: str | None = None, color: str = "teal") -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("Comment", text)
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def jpeg_with_gps(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.0)
    gps[3] = "E"
    gps[4] = (13.0, 24.0, 36.0)
    out = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(out, format="JPEG", exif=exif.tobytes(), quality=90)
    return out.getvalue()


@dataclass
class Stack:
    canvas_url: str
    orchestrator_url: str
    aws: Any
    database_url: str
    deps: Any
    auth: AuthServer


def build_deps(aws: Any, database_url: str, auth: AuthServer, orchestrator_url: str, **overrides: Any) -> Any:
    """The canvas app's parts, as canvas.__main__.built makes them, bound to the test's servers."""
    from botocore.config import Config

    from canvas.app import Deps
    from canvas.auth import JwksCache, Verifier
    from canvas.db import Repo, open_pool
    from canvas.reconcile import run_once
    from canvas.storage import Storage
    from canvas.tasks import ImageTasks, ImageTypes
    from canvas.uploads import Images, Limits
    from orchestrator.client import Client

    pool = open_pool(database_url, max_size=4)
    repo = Repo(pool)
    s3 = aws.client("s3", config=Config(signature_version="s3v4"))
    storage = Storage(s3=s3, bucket=overrides.get("bucket", aws.bucket), prefix="inputs/canvas/", url_expires_s=300)
    client = Client(orchestrator_url, ORCHESTRATOR_TOKEN, timeout_s=15)
    tasks = ImageTasks(repo, client, ImageTypes(client))
    limits = Limits(
        max_upload_bytes=overrides.get("max_upload_bytes", 2_000_000),
        max_direct_bytes=overrides.get("max_direct_bytes", 5_000_000),
        max_pixels=overrides.get("max_pixels", 4_000_000),
    )
    verifier = Verifier(
        issuer=auth.issuer,
        audience="authenticated",
        jwks=JwksCache(f"{auth.issuer}/.well-known/jwks.json", max_age_s=600, min_refetch_s=0),
        secret=HS_SECRET,
    )
    return Deps(
        verifier=verifier,
        images=Images(repo, storage, limits),
        tasks=tasks,
        reconcile=lambda: run_once(repo, storage, tasks, pending_ttl_s=3600),
        reconcile_every_s=0,
    )


def orchestrator_app(aws: Any) -> Any:
    """The real orchestrator app in bearer-token mode over the local AWS, as `make canvas` runs it."""
    from scripts.canvas_local import orchestrator_app as local_orchestrator

    return local_orchestrator(aws, ORCHESTRATOR_TOKEN)


@pytest.fixture(scope="module")
def canvas_stack(
    moto_endpoint: str, synthesized: Any, canvas_pg: LocalPostgres, auth_server: AuthServer
) -> Iterator[Stack]:
    import localaws
    from canvas.app import create_app
    from orchestrator.server import serve_in_thread

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    aws = localaws.build(synthesized("local"), moto_endpoint)
    database_url = fresh_database(canvas_pg)
    with ExitStack() as stack:
        orchestrator_url = stack.enter_context(serve_in_thread(orchestrator_app(aws)))
        deps = build_deps(aws, database_url, auth_server, orchestrator_url)
        stack.callback(deps.images.repo.pool.close)
        canvas_url = stack.enter_context(serve_in_thread(create_app(deps)))
        yield Stack(canvas_url, orchestrator_url, aws, database_url, deps, auth_server)
