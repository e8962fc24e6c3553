"""Request and response bodies (they also make the OpenAPI document served at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.tasks import NotifyState, TaskStatus

from .gpu import NudgeStatus


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="a task type registered in core/task_types.json",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="checked against the type's declaration")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="repeating a request with the same key returns the first task and enqueues nothing",
    )
    notify_url: str | None = Field(
        default=None,
        description="an https URL told (a signed POST) when the task ends: a public host, no credentials, no "
        "fragment, at most 2048 characters",
    )


class NotifyView(BaseModel):
    """Where the task's webhook delivery stands."""

    state: NotifyState | None = Field(description="PENDING until delivered (DELIVERED) or out of attempts (FAILED)")
    attempts: int = Field(description="deliveries tried so far")
    error: str | None = Field(description="why the last delivery failed")
    at: int | None = Field(description="epoch ms of the last change of state")


class Task(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str
    status: TaskStatus
    type: str
    params: dict[str, Any]
    created_at: int = Field(description="epoch ms")
    updated_at: int | None = None
    enqueued_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    heartbeat_at: int | None = None
    attempts: int = 0
    worker: str | None = None
    result_uri: str | None = None
    error: str | None = None
    idempotency_key: str | None = None
    submitted_by: str | None = Field(default=None, description="the caller who submitted it (an IAM ARN, or local)")
    cancel_requested: bool | None = None
    notify_url: str | None = Field(default=None, description="the webhook the submitter named")
    notify: NotifyView | None = Field(default=None, description="present when the task named a webhook")
    gpu_seconds: float | None = Field(default=None, description="GPU time the task's settled attempts used")
    cost_usd: float | None = Field(default=None, description="gpu_seconds at the price when it settled")


class GpuNudge(BaseModel):
    """What a submit told the controller, the function that starts GPUs (orchestrator/gpu.py)."""

    controller: NudgeStatus = Field(
        description="notified: the controller was invoked and starts a GPU if none is free; failed: the invoke "
        "failed (see error) and the controller's 1-minute schedule starts one; skipped: this request queued nothing"
    )
    error: str | None = None


class Submission(Task):
    gpu: GpuNudge


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ErrorBody(BaseModel):
    error: str
    message: str


class Live(BaseModel):
    ok: bool


class NudgeRecord(GpuNudge):
    task_id: str | None
    at_ms: int | None = Field(description="epoch ms")


class ControllerHealth(BaseModel):
    function: str = Field(description="CONTROLLER_FUNCTION_NAME")
    last_nudge: NudgeRecord | None = Field(description="this process's latest submit nudge, null before any")
    last_failure: NudgeRecord | None = Field(description="this process's latest failed nudge, null if none")


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    ok: bool
    queue: dict[str, Any]
    dlq: dict[str, Any]
    gpu: dict[str, Any] = Field(description="instance id -> EC2 state, or an error")
    controller: ControllerHealth


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=1024, description="the file's name; kept as [A-Za-z0-9._-]")
    bytes: int = Field(ge=0, description="the file's size; the presigned policy admits no larger body")


class UploadGrant(BaseModel):
    url: str = Field(description="POST the fields, then the file as the last form field `file`, here")
    fields: dict[str, str]
    key: str = Field(description="the S3 key: what a param marked s3_input takes")
    expires_in: int = Field(description="seconds the grant stays valid")
    max_bytes: int


class ResultObject(BaseModel):
    name: str = Field(description="the path under the task's results prefix")
    key: str
    size: int
    url: str = Field(description="presigned GET, valid expires_in seconds")


class Results(BaseModel):
    task_id: str
    status: TaskStatus
    result_uri: str | None
    objects: list[ResultObject]
    truncated: bool = Field(description="true when there were more objects than one answer lists")
    expires_in: int


class LogTail(BaseModel):
    text: str = Field(description="the end of the log, UTF-8 (undecodable bytes replaced)")
    size: int = Field(description="the whole log's size in bytes")
    truncated: bool = Field(description="true when text is only the last part")
    present: bool


class Logs(BaseModel):
    task_id: str
    status: TaskStatus
    stdout: LogTail
    stderr: LogTail


class ParamInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    required: bool


class TaskTypeInfo(BaseModel):
    name: str
    description: str
    timeout_s: int
    params: list[ParamInfo]


class TaskTypes(BaseModel):
    types: list[TaskTypeInfo]
