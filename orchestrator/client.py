"""A small HTTP client for the service, used by the CLI: stdlib HTTP, plus botocore's SigV4 signer in IAM mode.

In IAM mode the service sits behind a Lambda function URL with AWS_IAM auth: Lambda computes the SigV4 signature
of each request itself and runs the function only if it matches (service `lambda`, the URL's region). The body's
sha256 travels in `x-amz-content-sha256`, which function URLs require for a request with a body and which is
signed with the rest. https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

_LAMBDA_URL = re.compile(r"^[a-z0-9]+\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


class ServiceError(Exception):
    """The service answered with an error status (`status` > 0) or could not be reached (`status` == 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status in (502, 503, 504)


class TransferError(Exception):
    """S3 refused a file transfer (`status` > 0: 4xx/5xx) or could not be reached (`status` == 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SetupError(Exception):
    """Something on this machine keeps the CLI from making the request (no credentials, no region, bad config)."""


def lambda_url_region(url: str) -> str | None:
    """`https://<id>.lambda-url.<region>.on.aws/` -> region; None for any other URL."""
    host = urllib.parse.urlsplit(url).hostname or ""
    found = _LAMBDA_URL.match(host)
    return found.group(1) if found else None


class Signer(Protocol):
    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """The headers to send: `headers` plus whatever authenticates this exact request."""
        ...


class SigV4Signer:
    """Signs with the caller's own AWS credentials (botocore's default chain: environment, profile, SSO, ...),
    frozen per request so refreshing credentials (SSO, assumed roles) stay valid."""

    SERVICE = "lambda"

    def __init__(self, credentials: Any, region: str) -> None:
        self.credentials = credentials
        self.region = region

    @classmethod
    def from_environment(cls, region: str) -> SigV4Signer:
        import botocore.session

        credentials = botocore.session.Session().get_credentials()
        if credentials is None:
            raise SetupError(
                "no AWS credentials to sign with (IAM mode): run `aws sso login`, set AWS_PROFILE, or export keys"
            )
        return cls(credentials, region)

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        unsigned = {**headers, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
        request = AWSRequest(method=method, url=url, data=body, headers=unsigned)
        frozen = getattr(self.credentials, "get_frozen_credentials", lambda: self.credentials)()
        SigV4Auth(frozen, self.SERVICE, self.region).add_auth(request)
        return dict(request.headers.items())


@dataclass(frozen=True)
class Backoff:
    attempts: int = 4
    first_delay_s: float = 0.5
    factor: float = 2.0


class Client:
    def __init__(
        self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0, signer: Signer | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.signer = signer

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.signer is not None:
            headers = self.signer.sign(method, url, headers, data or b"")
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
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
        self,
        task_type: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        backoff: Backoff = Backoff(),
        *,
        notify_url: str | None = None,
    ) -> dict[str, Any]:
        """Submits with an idempotency key (a fresh one unless given), so retrying after a 503 or a lost
        connection can never create a second task. `notify_url`: the task's webhook."""
        body = {"type": task_type, "params": params, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        if notify_url is not None:
            body["notify_url"] = notify_url
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
        return self.request("GET", f"/tasks/{_segment(task_id)}")

    def list(self, status: str, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        query = {"status": status, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        return self.request("GET", "/tasks?" + urllib.parse.urlencode(query))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/tasks/{_segment(task_id)}/cancel")

    def results(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/tasks/{_segment(task_id)}/results")

    def logs(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/tasks/{_segment(task_id)}/logs")

    def types(self) -> dict[str, Any]:
        return self.request("GET", "/types")

    def cost(self, since: str | None = None) -> dict[str, Any]:
        """The cost report (`since`: 30m, 12h, 7d, an ISO date; None: the service's default)."""
        return self.request("GET", "/cost" + ("?" + urllib.parse.urlencode({"since": since}) if since else ""))

    def upload_grant(self, name: str, size: int) -> dict[str, Any]:
        return self.request("POST", "/uploads", {"name": name, "bytes": size})


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")
