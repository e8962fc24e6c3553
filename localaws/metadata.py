"""An instance metadata service (IMDS) for one instance, as EC2 answers it with IMDSv2 required (the launch template's
http_tokens = required), for tests and the local demo: bound to 127.0.0.1 on a free port, running until its user
stops it (a context manager).

What is modelled, each as https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
and the pages named below describe it:
- PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds: an integer 1..21600 gives a token (text, with the
  same header on the answer) good for that many seconds; the header missing or out of range is 400; a PUT carrying
  X-Forwarded-For is 403 (IMDS refuses token requests that came through a proxy).
- GET /latest/meta-data/<item> without a valid, unexpired X-aws-ec2-metadata-token is 401, whatever the item.
- GET /latest/meta-data/instance-id: the instance's id, text.
- GET /latest/meta-data/spot/instance-action: {"action": "terminate"|"stop"|"hibernate", "time": "...Z"} once
  `set_spot_action` gave a notice, else 404
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html).
- GET /latest/meta-data/events/recommendations/rebalance: {"noticeTime": "...Z"} once `set_rebalance` gave one,
  else 404 (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html).
- GET /latest/meta-data/autoscaling/target-lifecycle-state: the state, text, from the `target_lifecycle_state`
  callable when one is given (localaws/autoscaling.py's model of the group), else what `set_target_lifecycle_state`
  set; 404 while that is None (not an Auto Scaling instance)
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html).
- Anything else under /latest/meta-data/ is 404; other paths and methods are 404 and 405.

Not modelled: the other metadata items and categories, user data, the instance identity documents, IMDSv1 (a GET
without a token: 401 here, as with http_tokens = required), the hop limit, IPv6, and EC2's own rate limiting.
`requests` counts what was asked (method and path), so a test can show that a program did or did not ask.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21600
SPOT_ACTIONS = ("hibernate", "stop", "terminate")
NOTICE_LEAD_S = 120  # a Spot interruption notice comes two minutes before the action
META = "/latest/meta-data/"


def _stamp(at: datetime | None, default: datetime) -> str:
    return (at or default).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MetadataServer:
    """IMDS for `instance_id`. `target_lifecycle_state`: called on each request for that item (None: 404)."""

    def __init__(
        self,
        instance_id: str,
        *,
        target_lifecycle_state: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance_id = instance_id
        self._target = target_lifecycle_state
        self._target_state: str | None = None
        self._spot: dict[str, str] | None = None
        self._rebalance: dict[str, str] | None = None
        self._tokens: dict[str, float] = {}  # token -> when it expires (clock)
        self._clock = clock
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="imds", daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what the instance is told -------------------------------------------------------------------------------
    def set_spot_action(self, action: str = "terminate", at: datetime | None = None) -> None:
        """The Spot interruption notice: `action` at `at` (default: two minutes from now)."""
        if action not in SPOT_ACTIONS:
            raise ValueError(f"spot action must be one of {', '.join(SPOT_ACTIONS)}, got {action!r}")
        now = datetime.now(UTC)
        with self._lock:
            self._spot = {"action": action, "time": _stamp(at, now + timedelta(seconds=NOTICE_LEAD_S))}

    def set_rebalance(self, at: datetime | None = None) -> None:
        """A rebalance recommendation, noticed at `at` (default: now)."""
        with self._lock:
            self._rebalance = {"noticeTime": _stamp(at, datetime.now(UTC))}

    def set_target_lifecycle_state(self, state: str | None) -> None:
        """What autoscaling/target-lifecycle-state answers when no callable was given (None: 404)."""
        with self._lock:
            self._target_state = state

    # -- the server ----------------------------------------------------------------------------------------------
    def start(self) -> MetadataServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MetadataServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _answer(self, method: str, path: str, headers: Any) -> tuple[int, str, dict[str, str]]:
        """(status, body, extra headers) for one request."""
        with self._lock:
            self.requests.append((method, path))
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, "", {}
            if headers.get("X-Forwarded-For"):
                return 403, "", {}
            raw = headers.get(TOKEN_TTL_HEADER, "")
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_TTL_S:
                return 400, "", {}
            token = secrets.token_urlsafe(32)
            with self._lock:
                self._tokens[token] = self._clock() + int(raw)
            return 200, token, {TOKEN_TTL_HEADER: raw}
        if not path.startswith("/latest/"):
            return 404, "", {}
        if method != "GET":
            return 405, "", {}
        with self._lock:
            expires = self._tokens.get(headers.get(TOKEN_HEADER, ""))
        if expires is None or self._clock() >= expires:
            return 401, "", {}
        body = self._item(path.removeprefix(META)) if path.startswith(META) else None
        return (404, "", {}) if body is None else (200, body, {})

    def _item(self, item: str) -> str | None:
        with self._lock:
            spot, rebalance, state = self._spot, self._rebalance, self._target_state
        if item == "instance-id":
            return self.instance_id
        if item == "spot/instance-action":
            return json.dumps(spot) if spot is not None else None
        if item == "events/recommendations/rebalance":
            return json.dumps(rebalance) if rebalance is not None else None
        if item == "autoscaling/target-lifecycle-state":
            return self._target() if self._target is not None else state
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that opens a connection and sends nothing cannot hold a thread for long

            def _reply(self) -> None:
                status, body, extra = server._answer(self.command, self.path.split("?", 1)[0], self.headers)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _reply  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
