"""A small HTTP client for the service (stdlib only), used by the CLI."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any


class ServiceError(Exception):
    """The service answered with an error status (`status` > 0) or could not be reached (`status` == 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status in (502, 503, 504)


@dataclass(frozen=True)
class Backoff:
    attempts: int = 4
    first_delay_s: float = 0.5
    factor: float = 2.0


class Client:
    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (URL is configuration)
                return dict(json.loads(resp.read() or b"{}"))
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                message = json.loads(raw).get("message") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace") or err.reason
            raise ServiceError(err.code, f"HTTP {err.code}: {message}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise ServiceError(0, f"cannot reach {self.base_url}: {err}") from None

    def submit(
        self, task_type: str, params: dict[str, Any], idempotency_key: str | None = None, backoff: Backoff = Backoff()
    ) -> dict[str, Any]:
        """Submits with an idempotency key (a fresh one unless given), so retrying after a 503 or a lost
        connection can never create a second task."""
        body = {"type": task_type, "params": params, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        delay = backoff.first_delay_s
        for attempt in range(1, backoff.attempts + 1):
            try:
                return self.request("POST", "/tasks", body)
            except ServiceError as err:
                if not err.transient or attempt == backoff.attempts:
                    raise
            time.sleep(delay)
            delay *= backoff.factor
        raise AssertionError("unreachable")

    def get(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/tasks/{urllib.parse.quote(task_id, safe='')}")

    def list(self, status: str, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        query = {"status": status, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        return self.request("GET", "/tasks?" + urllib.parse.urlencode(query))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/tasks/{urllib.parse.quote(task_id, safe='')}/cancel")
