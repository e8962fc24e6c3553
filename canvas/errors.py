"""The one error type handlers raise; the app turns it into `{"error": code, "message": ...}` with its status."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str = "image") -> ApiError:
    """Another user's row answers exactly like a missing one: nothing tells whether it exists."""
    return ApiError(404, "not_found", f"no such {what}")
