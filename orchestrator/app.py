"""The HTTP service. `create_app(settings, clients)` builds it (tests inject moto-bound clients);
`app_from_env()` is the factory uvicorn runs in the container (`uvicorn --factory orchestrator.app:app_from_env`).
The docs pages load Swagger UI / ReDoc from the service itself (fastapi-offline), so they work with no network."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline

from core import logs
from core.store import TaskStore
from core.tasks import TaskStatus

from .gpu import GpuStarter
from .http_guards import DOCS_ASSETS, BearerAuth, BodyLimit
from .registry import registry_validator
from .schemas import ErrorBody, Health, Live, SubmitRequest, Task, TaskPage
from .service import ApiError, TaskService, Validator
from .settings import Clients, Settings

log = logging.getLogger("orchestrator")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 503)
}
# Fields a task does not have (yet) are left out rather than shown as null; next_cursor is always set.
TASK_OUT: dict[str, Any] = {"response_model_exclude_unset": True, "responses": ERRORS}


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "bad_json", "request body is not valid JSON"
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return 422, "invalid_request", "; ".join(parts)


def service_of(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


Service = Annotated[TaskService, Depends(service_of)]
# BearerAuth (middleware) enforces the token; this only declares it in the OpenAPI document, on every route here.
bearer = HTTPBearer(scheme_name="bearer", description="the ORCHESTRATOR_TOKEN value", auto_error=False)
routes = APIRouter(dependencies=[Depends(bearer)])
public = APIRouter()  # no token: listed in BearerAuth.OPEN_PATHS


@routes.post("/tasks", status_code=202, response_model=Task, **TASK_OUT)
def submit(body: SubmitRequest, response: Response, service: Service) -> dict[str, Any]:
    """Queue a task and make sure the GPU is starting. A repeat with the same `idempotency_key` returns the
    first task (header `Idempotent-Replayed: true`) and enqueues nothing."""
    out = service.submit(body.type, body.params, body.idempotency_key)
    if out.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return out.task


@routes.get("/tasks/{task_id}", response_model=Task, **TASK_OUT)
def get_task(task_id: str, service: Service) -> dict[str, Any]:
    return service.get(task_id)


@routes.get("/tasks", response_model=TaskPage, **TASK_OUT)
def list_tasks(
    service: Service,
    status: Annotated[TaskStatus, Query(description="tasks in this status, newest first")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    items, next_cursor = service.list(status, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


@routes.post("/tasks/{task_id}/cancel", response_model=Task, **TASK_OUT)
def cancel_task(task_id: str, service: Service) -> dict[str, Any]:
    """A QUEUED task becomes CANCELLED and never runs; a RUNNING one gets `cancel_requested` and its adapter
    stops it. Cancelling a CANCELLED task returns it; other finished tasks answer 409."""
    return service.cancel(task_id)


@routes.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(service: Service) -> JSONResponse:
    """Reads the queues and the GPU state: 503 when AWS cannot be read or an instance id is unknown."""
    ok, report = service.health()
    return JSONResponse({"ok": ok, **report}, status_code=200 if ok else 503)


@public.get("/livez", response_model=Live)
def livez() -> dict[str, bool]:
    """The process answers HTTP. No token and no AWS call: for load balancer and container liveness checks."""
    return {"ok": True}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    # A message may quote the request (a param name, a field): one with a lone surrogate cannot be encoded as
    # UTF-8, and the refusal would become a 500. Escape such characters instead.
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": code, "message": safe}, status_code=status)


async def api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


async def bad_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(*_validation_message(exc))


def create_app(settings: Settings, clients: Clients, *, validate: Validator | None = None) -> FastAPI:
    starter = GpuStarter(clients.ec2, settings.instance_ids, settings.gpu_retry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            starter.close()  # stop the `stopping` retry thread; the shutdown Lambda remains the backstop

    app = FastAPIOffline(
        title="GPU task orchestrator",
        version="1",
        lifespan=lifespan,
        description="Queue GPU tasks of registered types; the GPU instance starts when work arrives.",
        static_url=DOCS_ASSETS,
    )
    app.state.service = TaskService(
        store=TaskStore(clients.table, status_index=settings.status_index),
        sqs=clients.sqs,
        queue_url=settings.queue_url,
        dlq_url=settings.dlq_url,
        starter=starter,
        validate=validate or registry_validator(),
    )
    app.state.starter = starter
    if settings.insecure:
        logs.event(log, "insecure_local_mode", logging.WARNING, note="no bearer token required")
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.include_router(routes)
    app.include_router(public)
    # Added last = outermost: the token is checked before a body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, token=settings.token if not settings.insecure else None)
    return app


def app_from_env() -> FastAPI:
    logs.setup()
    settings = Settings.from_env()
    return create_app(settings, Clients.from_settings(settings))
