"""Request and response bodies (they also make the OpenAPI document served at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.tasks import TaskStatus


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
    cancel_requested: bool | None = None


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ErrorBody(BaseModel):
    error: str
    message: str


class Live(BaseModel):
    ok: bool


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    ok: bool
    queue: dict[str, Any]
    dlq: dict[str, Any]
    gpu: dict[str, Any]
    gpu_start_retrying: bool
