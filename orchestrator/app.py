"""The HTTP service. `create_app(settings, clients)` builds it (tests inject moto-bound clients);
`app_from_env()` is the factory uvicorn runs in the container (`uvicorn --factory orchestrator.app:app_from_env`)
and orchestrator/lambda_handler.py wraps for a Lambda function URL.
The docs pages load Swagger UI / ReDoc from the service itself (fastapi-offline), so they work with no network."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi_offline import FastAPIOffline

from core import logs
from core.cost import CostReport
from core.hosts import HostStore
from core.store import TaskStore
from core.tasks import TaskStatus

from . import registry as types
from .api_metrics import RefusedSubmits, SubmitMetrics
from .costs import DEFAULT_SINCE, SINCE_MAX_CHARS, CostService
from .files import Artifacts
from .gpu import ControllerNotifier, GpuStates
from .http_guards import DOCS_ASSETS, BearerAuth, BodyLimit, IamAuth
from .identity import SCOPE_KEY, Caller
from .schemas import (
    ErrorBody,
    Health,
    Live,
    Logs,
    Results,
    Submission,
    SubmitRequest,
    Task,
    TaskPage,
    TaskTypes,
    UploadGrant,
    UploadRequest,
)
from .service import ApiError, TaskService, Validator
from .settings import Clients, Settings

log = logging.getLogger("orchestrator")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 503)
}
FILE_OUT: dict[str, Any] = {"responses": ERRORS}
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


def caller_of(request: Request) -> Caller:
    caller = request.scope.get(SCOPE_KEY)
    if not isinstance(caller, Caller):  # only when no auth middleware ran: never serve such a request
        raise ApiError(401, "unauthorized", "no caller identity")
    return caller


def artifacts_of(request: Request) -> Artifacts:
    found: Artifacts | None = request.app.state.artifacts
    if found is None:
        raise ApiError(503, "files_unavailable", "this service has no artifacts bucket (ARTIFACTS_BUCKET) or S3 client")
    return found


def costs_of(request: Request) -> CostService:
    costs: CostService = request.app.state.costs
    return costs


Service = Annotated[TaskService, Depends(service_of)]
Costs = Annotated[CostService, Depends(costs_of)]
Me = Annotated[Caller, Depends(caller_of)]
Files = Annotated[Artifacts, Depends(artifacts_of)]
# The auth middleware (BearerAuth or IamAuth) enforces it; these only declare it in the OpenAPI document.
bearer = HTTPBearer(scheme_name="bearer", description="the ORCHESTRATOR_TOKEN value", auto_error=False)
sigv4 = APIKeyHeader(
    name="Authorization",
    scheme_name="sigv4",
    description="AWS SigV4 for service `lambda` (IAM mode: the function URL checks it; `gpuq` signs)",
    auto_error=False,
)
public = APIRouter()  # no token: the paths http_guards.is_open lists


def task_routes(security: Any) -> APIRouter:
    """Every route that needs a caller, declaring `security` (the mode's scheme) in the OpenAPI document."""
    routes = APIRouter(dependencies=[Depends(security)])

    @routes.post("/tasks", status_code=202, response_model=Submission, **TASK_OUT)
    def submit(body: SubmitRequest, response: Response, service: Service, caller: Me) -> dict[str, Any]:
        """Queue a task and tell the controller, which starts a GPU for it; `gpu` says whether that message got
        through (if not, the controller's 1-minute schedule starts one). A repeat with the same `idempotency_key`
        returns the first task (header `Idempotent-Replayed: true`) and enqueues nothing."""
        out = service.submit(body.type, body.params, body.idempotency_key, caller, body.notify_url)
        if out.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return {**out.task, "gpu": out.gpu}

    @routes.get("/tasks/{task_id}", response_model=Task, **TASK_OUT)
    def get_task(task_id: str, service: Service, caller: Me) -> dict[str, Any]:
        """The task, if it is the caller's (or the caller is an admin); 404 otherwise."""
        return service.get(task_id, caller)

    @routes.get("/tasks", response_model=TaskPage, **TASK_OUT)
    def list_tasks(
        service: Service,
        caller: Me,
        status: Annotated[TaskStatus, Query(description="tasks in this status, newest first")],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor of the previous page")] = None,
    ) -> dict[str, Any]:
        """The caller's tasks (an admin's: everyone's). A page may hold fewer than `limit` items and still have
        a next_cursor: follow it until it is null."""
        items, next_cursor = service.list(status, limit, cursor, caller)
        return {"items": items, "next_cursor": next_cursor}

    @routes.post("/tasks/{task_id}/cancel", response_model=Task, **TASK_OUT)
    def cancel_task(task_id: str, service: Service, caller: Me) -> dict[str, Any]:
        """A QUEUED task becomes CANCELLED and never runs; a RUNNING one gets `cancel_requested` and its adapter
        stops it. Cancelling a CANCELLED task returns it; other finished tasks answer 409."""
        return service.cancel(task_id, caller)

    @routes.get("/tasks/{task_id}/results", response_model=Results, **FILE_OUT)
    def task_results(task_id: str, service: Service, files: Files, caller: Me) -> dict[str, Any]:
        """The objects under the task's results prefix, each with a presigned GET URL valid `expires_in` seconds.
        Empty until the adapter has kept something (a failed attempt keeps its logs there too)."""
        return files.results(service.owned(task_id, caller))

    @routes.get("/tasks/{task_id}/logs", response_model=Logs, **FILE_OUT)
    def task_logs(task_id: str, service: Service, files: Files, caller: Me) -> dict[str, Any]:
        """The end of the job's stdout and stderr as the adapter kept them (LOG_TAIL_BYTES of each, `truncated`
        when there is more)."""
        return files.logs(service.owned(task_id, caller))

    @routes.post("/uploads", response_model=UploadGrant, **FILE_OUT)
    def upload(body: UploadRequest, files: Files, caller: Me) -> dict[str, Any]:
        """A presigned S3 POST for one input file, under the caller's own prefix. Send `fields` and then the file
        (form field `file`, last) to `url`; then name `key` in a param marked `s3_input`."""
        return files.upload(caller, body.name, body.bytes)

    @routes.get("/types", response_model=TaskTypes, **FILE_OUT)
    def task_types(request: Request, _: Me) -> dict[str, Any]:
        """The registered task types and their params (what to submit, not what runs)."""
        return {"types": request.app.state.types}

    @routes.get("/cost", response_model=CostReport, responses=ERRORS)
    def cost(
        costs: Costs,
        caller: Me,
        since: Annotated[
            str, Query(max_length=SINCE_MAX_CHARS, description="a duration back from now (30m, 12h, 7d) or an ISO date")
        ] = DEFAULT_SINCE,
    ) -> CostReport:
        """GPU time and cost of the tasks finished since `since`, by type and by submitter; for an admin also the
        GPU time billed and the idle overhead (billed minus used). Other callers see their own tasks only."""
        return costs.report(since, caller)

    @routes.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz(service: Service) -> JSONResponse:
        """Reads the queues and the GPU state, and says whether the latest nudge of the controller got through: 503
        when AWS cannot be read or an instance id is unknown."""
        ok, report = service.health()
        return JSONResponse({"ok": ok, **report}, status_code=200 if ok else 503)

    return routes


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


def create_app(
    settings: Settings,
    clients: Clients,
    *,
    validate: Validator | None = None,
    metrics_out: Callable[[str], Any] | None = None,
) -> FastAPI:
    """`metrics_out`: where the EMF metric lines go (default stdout, which Lambda sends to CloudWatch Logs)."""
    registry = types.load()
    metrics = SubmitMetrics(settings.metrics_namespace, metrics_out)
    store = TaskStore(clients.table, status_index=settings.status_index)
    # Nothing here outlives a request (no thread, no lifespan work): the controller Lambda starts the GPUs.
    controller = ControllerNotifier(clients.lambda_, settings.controller_function)
    app = FastAPIOffline(
        title="GPU task orchestrator",
        version="1",
        description="Queue GPU tasks of registered types; a GPU instance starts when work arrives.",
        static_url=DOCS_ASSETS,
    )
    app.state.service = TaskService(
        store=store,
        sqs=clients.sqs,
        queue_url=settings.queue_url,
        dlq_url=settings.dlq_url,
        controller=controller,
        gpus=GpuStates(
            clients.ec2, settings.instance_ids, fleet_name=settings.fleet_name, autoscaling=clients.autoscaling
        ),
        validate=validate or types.registry_validator(registry=registry),
        inputs_of=types.inputs_of(registry),
        metrics=metrics,
        allow_loopback_webhooks=settings.webhook_allow_loopback,
    )
    app.state.costs = CostService(
        store=store,
        hosts=HostStore(clients.dynamodb, settings.hosts_table) if settings.hosts_table and clients.dynamodb else None,
        hosts_table=settings.hosts_table,
        hourly_usd=settings.gpu_hourly_usd,
    )
    app.state.controller = controller
    app.state.types = types.describe(registry)
    app.state.artifacts = (
        Artifacts(
            s3=clients.s3,
            bucket=settings.artifacts_bucket,
            upload_max_bytes=settings.upload_max_bytes,
            upload_expires_s=settings.upload_url_expires_s,
            result_expires_s=settings.result_url_expires_s,
            log_tail_bytes=settings.log_tail_bytes,
        )
        if settings.artifacts_bucket and clients.s3 is not None
        else None
    )
    if settings.insecure:
        logs.event(log, "insecure_local_mode", logging.WARNING, note="no bearer token required")
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.include_router(task_routes(sigv4 if settings.auth == "iam" else bearer))
    app.include_router(public)
    # Added last = outermost: the caller is known (or refused) before a body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RefusedSubmits, metrics=metrics)  # sees the body guard's refusals, never unauthenticated ones
    if settings.auth == "iam":
        app.add_middleware(IamAuth, admins=settings.admin_arns)
    else:
        app.add_middleware(BearerAuth, token=settings.token if not settings.insecure else None)
    return app


def app_from_env(*, loggers: tuple[str, ...] = ("",)) -> FastAPI:
    """`loggers`: where the JSON log lines are set up (core.logs.setup); the whole process by default, the
    service's own loggers where a runtime owns the root logger (Lambda)."""
    logs.setup(loggers=loggers)
    settings = Settings.from_env()
    return create_app(settings, Clients.from_settings(settings))
