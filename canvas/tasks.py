"""GPU tasks on an image, through the orchestrator's HTTP API (orchestrator/client.py's Client: POST /tasks,
GET /tasks/{id}, GET /tasks/{id}/results).

An image task type is one of the orchestrator's registered types (GET /types) with exactly one `s3_input` param:
the canvas fills that param with the image's key, the user chooses the others, and the orchestrator validates
them. Write order: the row (`SUBMITTING`, its id the submit's idempotency key) -> POST /tasks -> the row gets the
task id. A submit the orchestrator refuses removes the row; a crash between the two writes leaves a SUBMITTING row
that reconcile submits again with the same key, which the orchestrator answers with the task it already has.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .db import ImageRow, Repo, TaskRow
from .errors import ApiError

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
TYPES_MAX_AGE_S = 300.0


class OrchestratorError(Exception):
    """What orchestrator.client.ServiceError is: `status` 0 when the service could not be reached."""

    status: int
    message: str


class Orchestrator(Protocol):
    def submit(self, task_type: str, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]: ...
    def get(self, task_id: str) -> dict[str, Any]: ...
    def results(self, task_id: str) -> dict[str, Any]: ...
    def types(self) -> dict[str, Any]: ...


@dataclass
class ImageTypes:
    """The orchestrator's image task types, as name -> the name of its s3_input param; fetched and cached."""

    client: Orchestrator
    clock: Callable[[], float] = time.monotonic
    _cached: dict[str, str] = field(default_factory=dict)
    _at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def input_param(self, task_type: str) -> str:
        with self._lock:
            if task_type not in self._cached or self.clock() - self._at > TYPES_MAX_AGE_S:
                self._cached = image_types(self.client.types())
                self._at = self.clock()
            found = self._cached.get(task_type)
        if found is None:
            names = ", ".join(sorted(self._cached)) or "none"
            raise ApiError(422, "not_an_image_type", f"{task_type!r} is not an image task type (these are: {names})")
        return found


def image_types(described: dict[str, Any]) -> dict[str, str]:
    """From GET /types: the types with exactly one s3_input param, and that param's name."""
    out = {}
    for spec in described.get("types", []):
        inputs = [p["name"] for p in spec.get("params", []) if p.get("s3_input")]
        if len(inputs) == 1:
            out[str(spec["name"])] = str(inputs[0])
    return out


def _status_of(err: Exception) -> int:
    return int(getattr(err, "status", 0) or 0)


@dataclass(frozen=True)
class ImageTasks:
    repo: Repo
    client: Orchestrator
    types: ImageTypes

    def submit(self, image: ImageRow, task_type: str, params: dict[str, Any]) -> TaskRow:
        input_param = self.types.input_param(task_type)
        if input_param in params:
            raise ApiError(422, "input_is_the_image", f"param {input_param!r} is the image itself; leave it out")
        full = {**params, input_param: image.s3_key}
        row = self.repo.insert_task(uuid.uuid4(), image, task_type, params)
        try:
            task = self.client.submit(task_type, full, idempotency_key=str(row.id))
        except Exception as err:
            self.repo.remove_task(row.id)
            status = _status_of(err)
            message = str(getattr(err, "message", err))
            if status in (400, 409, 422):
                raise ApiError(422, "task_refused", message) from None
            raise ApiError(503, "orchestrator_unavailable", f"the task was not submitted: {message}") from None
        return self.repo.task_submitted(row.id, str(task["task_id"]), str(task["status"]))

    def resubmit(self, row: TaskRow) -> TaskRow | None:
        """A SUBMITTING row left by a crash: submit again under the same key (reconcile)."""
        image = self.repo.image_by_id(row.image_id)
        if image is None or image.state != "ready":
            self.repo.remove_task(row.id)
            return None
        full = {**row.params, self.types.input_param(row.type): image.s3_key}
        try:
            task = self.client.submit(row.type, full, idempotency_key=str(row.id))
        except Exception as err:
            if _status_of(err) in (400, 409, 422):
                self.repo.remove_task(row.id)
            return None
        return self.repo.task_submitted(row.id, str(task["task_id"]), str(task["status"]))

    def views(self, owner: uuid.UUID, image_id: uuid.UUID) -> list[dict[str, Any]]:
        """The image's tasks, refreshed from the orchestrator when not finished, with result URLs when done."""
        return [self._view(row) for row in self.repo.tasks_of(owner, image_id)]

    def _view(self, row: TaskRow) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": str(row.id),
            "type": row.type,
            "params": row.params,
            "task_id": row.task_id,
            "status": row.status,
            "error": row.error,
            "created_at": row.created_at.isoformat(),
            "results": [],
        }
        if row.task_id is None:
            return view
        try:
            if row.status not in TERMINAL:
                task = self.client.get(row.task_id)
                view["status"], view["error"] = task["status"], task.get("error")
                if task["status"] != row.status or task.get("error") != row.error:
                    self.repo.task_status(row.id, task["status"], task.get("result_uri"), task.get("error"))
            if view["status"] == "SUCCEEDED":
                found = self.client.results(row.task_id)
                view["results"] = [{"name": o["name"], "size": o["size"], "url": o["url"]} for o in found["objects"]]
                view["results_expire_in"] = found.get("expires_in")
        except Exception as err:  # the last known status is still worth showing
            view["stale"] = f"could not reach the orchestrator: {getattr(err, 'message', err)}"
        return view
