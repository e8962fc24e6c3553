"""The one error type handlers raise (core.errors.ApiError, shared with the task API); the app turns it into
`{"error": code, "message": ...}` with its status."""

from __future__ import annotations

from core.errors import ApiError

__all__ = ["ApiError", "not_found"]


def not_found(what: str = "image") -> ApiError:
    """Another user's row answers exactly like a missing one: nothing tells whether it exists."""
    return ApiError(404, "not_found", f"no such {what}")
