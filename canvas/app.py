"""The canvas HTTP service: thin handlers over canvas.uploads (images) and canvas.tasks (GPU tasks on them).

`create_app(deps)` builds it from injected parts (tests pass parts bound to a real Postgres, moto and the real
orchestrator); `python -m canvas` builds the parts from the environment (canvas/__main__.py).
Every route but `/`, `/static/*` and `/livez` needs `Authorization: Bearer <Supabase access token>`.
"""

from __future__ import annotations

import base64
import datetime as dt
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psycopg
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field

from .auth import KeysNeedFetch, Unauthorized, User, Verifier, bearer_token
from .db import ImageRow
from .errors import ApiError, not_found
from .images import StripStream
from .multipart import receive_file
from .reconcile import Periodic
from .tasks import ImageTasks
from .uploads import Images, image_view

STATIC = Path(__file__).with_name("static")
PAGE_MAX = 100


@dataclass(frozen=True)
class Deps:
    verifier: Verifier
    images: Images
    tasks: ImageTasks
    reconcile: Callable[[], object] | None = None
    reconcile_every_s: float = 0


class PresignRequest(BaseModel):
    name: str = Field(min_length=1, max_length=1000)
    bytes: int = Field(ge=1)
    content_type: str = Field(max_length=100)


class TaskRequest(BaseModel):
    type: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


def app_deps(request: Request) -> Deps:
    found: Deps = request.app.state.deps
    return found


async def deps_of(request: Request) -> Deps:
    """Async, as it only reads app state: FastAPI runs a plain `def` dependency on a worker thread."""
    return app_deps(request)


async def user_of(request: Request) -> User:
    """Checked on the event loop while the cached keys answer (0.2 ms, where a worker-thread hop cost about 1 ms
    per request); a token that needs the JWKS fetched (canvas/auth.py) is checked again on a worker thread."""
    verifier = app_deps(request).verifier
    try:
        token = bearer_token(request.headers.get("authorization"))
        try:
            return verifier.verify(token, may_fetch=False)
        except KeysNeedFetch:
            return await run_in_threadpool(verifier.verify, token)
    except Unauthorized as err:
        raise ApiError(401, "unauthorized", str(err)) from None


Ctx = Annotated[Deps, Depends(deps_of)]
Me = Annotated[User, Depends(user_of)]


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found() from None


def encode_cursor(row: ImageRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        when, _, ident = text.partition("|")
        return dt.datetime.fromisoformat(when), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_cursor", "cursor is not one this service returned") from None


def routes(app: FastAPI) -> None:  # noqa: C901 (one small function per route)
    @app.post("/images", status_code=201)
    async def upload(request: Request, deps: Ctx, me: Me) -> dict[str, Any]:
        """multipart/form-data with the image in field `file`; stripped as it streams to disk, checked, stored."""
        with tempfile.TemporaryDirectory(prefix="canvas-in-") as work:
            stream = StripStream(Path(work) / "stripped", max_pixels=deps.images.limits.max_pixels)
            try:
                got = await receive_file(
                    request.headers.get("content-type"),
                    request.headers.get("content-length"),
                    request.stream(),
                    stream,
                    deps.images.limits.max_upload_bytes,
                )
                row = await run_in_threadpool(deps.images.store, me.id, got.filename, stream)
            finally:
                stream.close()
        return image_view(row, deps.images.storage, with_url=True)

    @app.post("/images/uploads", status_code=201)
    def presign(body: PresignRequest, deps: Ctx, me: Me) -> dict[str, Any]:
        """A presigned S3 POST for a large image: send `fields` then the file (field `file`) to `url`, then POST
        `confirm`. Unconfirmed uploads are removed after CANVAS_PENDING_TTL_S."""
        return deps.images.presign(me.id, body.name, body.bytes, body.content_type)

    @app.post("/images/{image_id}/confirm")
    def confirm(image_id: str, deps: Ctx, me: Me) -> dict[str, Any]:
        row = deps.images.confirm(me.id, parse_id(image_id))
        return image_view(row, deps.images.storage, with_url=True)

    @app.get("/images")
    def list_images(
        deps: Ctx,
        me: Me,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        """The caller's images, newest first, each with a short-lived URL; follow next_cursor until null."""
        rows = deps.images.repo.list_images(uuid.UUID(me.id), limit + 1, decode_cursor(cursor) if cursor else None)
        page = rows[:limit]
        return {
            "items": [image_view(r, deps.images.storage, with_url=True) for r in page],
            "next_cursor": encode_cursor(page[-1]) if len(rows) > limit else None,
        }

    @app.get("/images/{image_id}")
    def get_image(image_id: str, deps: Ctx, me: Me) -> dict[str, Any]:
        return image_view(deps.images.get(me.id, parse_id(image_id)), deps.images.storage, with_url=True)

    @app.delete("/images/{image_id}", status_code=204)
    def delete_image(image_id: str, deps: Ctx, me: Me) -> Response:
        deps.images.delete(me.id, parse_id(image_id))
        return Response(status_code=204)

    @app.post("/images/{image_id}/tasks", status_code=202)
    def run_task(image_id: str, body: TaskRequest, deps: Ctx, me: Me) -> dict[str, Any]:
        """Run a GPU task on the image (an orchestrator type with one s3_input param, which is the image)."""
        image = deps.images.get(me.id, parse_id(image_id))
        row = deps.tasks.submit(image, body.type, body.params)
        return {"id": str(row.id), "task_id": row.task_id, "type": row.type, "status": row.status}

    @app.get("/images/{image_id}/tasks")
    def list_tasks(image_id: str, deps: Ctx, me: Me) -> dict[str, Any]:
        image = deps.images.get(me.id, parse_id(image_id))
        return {"items": deps.tasks.views(image.owner, image.id)}

    @app.get("/livez")
    def livez() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in ("app.js", "app.css"):
            raise not_found("file")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=media)


async def api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status, headers=headers)


async def dependency_down(_: Request, exc: Exception) -> JSONResponse:
    """S3 or Postgres failed mid-request; what was half-written is already undone (canvas/uploads.py)."""
    what = "the database" if isinstance(exc, psycopg.Error) else "image storage"
    message = f"{what} is unavailable ({type(exc).__name__}); nothing was kept, retry"
    return JSONResponse({"error": "unavailable", "message": message}, status_code=503)


async def bad_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in exc.errors()
    ]
    return JSONResponse({"error": "invalid_request", "message": "; ".join(parts)}, status_code=422)


def create_app(deps: Deps) -> FastAPI:
    periodic = Periodic(deps.reconcile_every_s, deps.reconcile) if deps.reconcile is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if periodic is not None:
            periodic.start()
        try:
            yield
        finally:
            if periodic is not None:
                periodic.stop()

    app = FastAPI(title="canvas", version="1", lifespan=lifespan, description="Image uploads that feed GPU tasks.")
    app.state.deps = deps
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    for kind in (S3UploadFailedError, ClientError, BotoCoreError, psycopg.OperationalError, PoolTimeout):
        app.add_exception_handler(kind, dependency_down)
    routes(app)
    return app
