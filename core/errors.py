"""The error an HTTP handler raises for a client mistake; each app turns it into `{"error": code, "message": ...}`.

Shared by the task API (orchestrator/) and the canvas service (canvas/): one shape for every 4xx they answer.
"""

from __future__ import annotations


class ApiError(Exception):
    """`status` is the HTTP status, `code` a stable machine-readable word, `message` one line for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
