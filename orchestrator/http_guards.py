"""Request guards that run before any handler: body size limit, then who is calling (bearer token or the IAM
identity of a Lambda function URL request). Each auth guard leaves the `Caller` in the scope for the handlers."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .identity import LOCAL, SCOPE_KEY, Caller, iam_caller

DOCS_ASSETS = "/docs-assets"  # where the app serves the docs pages' JS, CSS and icon (no CDN)


async def _send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """Reject bodies over `max_bytes` with 413 before the app sees them. The body is read here (bounded) and
    replayed to the app, so a client that omits or lies about Content-Length gains nothing. A non-empty body
    must be JSON (415 otherwise), so a wrong Content-Type gets a clear answer instead of a schema error."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = {"error": "body_too_large", "message": f"request body exceeds {self.max_bytes} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": "bad_request", "message": "invalid Content-Length"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and content_type != b"application/json":
            hint = "send the body as JSON with Content-Type: application/json"
            await _send_json(send, 415, {"error": "unsupported_media_type", "message": hint})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for disconnect, as the server would

        await self.app(scope, replay, send)


OPEN_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/livez"})


def is_open(path: str) -> bool:
    """The API docs (pages, their assets, /openapi.json) and /livez: served to anyone who reaches the service."""
    if path in OPEN_PATHS:
        return True
    # The assets are static files; no dot segment, so the prefix can never stand for another route.
    return path.startswith(DOCS_ASSETS + "/") and ".." not in path.split("/")


class BearerAuth:
    """Every path but the open ones (`is_open`) needs `Authorization: Bearer <token>`, compared in constant time.
    The caller is then `local`, this mode's one principal, an admin (it sees every task).
    `token=None` is the explicit insecure local mode (Settings refuses it unless asked for)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.token is None:
            await self.app({**scope, SCOPE_KEY: Caller(LOCAL, admin=True)}, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        # compare_digest on the whole value even when the scheme is wrong: timing reveals nothing either way
        good = hmac.compare_digest(presented.strip(), self.token)
        if not good or scheme.lower() != b"bearer":
            await _send_json(
                send,
                401,
                {"error": "unauthorized", "message": "missing or wrong bearer token"},
                ((b"www-authenticate", b"Bearer"),),
            )
            return
        await self.app({**scope, SCOPE_KEY: Caller(LOCAL, admin=True)}, receive, send)


class IamAuth:
    """IAM mode: the caller is the ARN the function URL put in the Lambda event (orchestrator/identity.py says why
    that can be trusted and nothing else can). A request without it is 401, whatever headers it carries: it did
    not come through the function URL. `admins`: ORCHESTRATOR_ADMIN_ARNS."""

    def __init__(self, app: ASGIApp, admins: tuple[str, ...]) -> None:
        self.app = app
        self.admins = admins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        caller = iam_caller(scope, self.admins)
        if caller is None:
            message = "no IAM identity: call the service through its function URL with a SigV4-signed request"
            await _send_json(send, 401, {"error": "unauthorized", "message": message})
            return
        await self.app({**scope, SCOPE_KEY: caller}, receive, send)
