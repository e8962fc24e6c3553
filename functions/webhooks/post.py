"""One webhook POST over https to exactly the addresses that were checked (core.webhook.public_addresses), stdlib
only (the Lambda zip carries no third-party packages).

The TCP connection goes to a checked IP; TLS still names the URL's host (SNI) and checks the certificate against it,
and the Host header is the URL's, so the receiver sees an ordinary request to its name while a DNS answer that
changes after the check cannot move the connection elsewhere. Redirects are never followed (http.client follows
none): a 3xx could point anywhere, so it is a failure of its own.

What an answer means (the retry rule of functions/webhooks/deliver.py):
- 2xx: delivered.
- 408 Request Timeout, 429 Too Many Requests, 5xx, a timeout, a refused or reset connection, a TLS failure: worth
  another try later.
- any other status (3xx, 4xx): final.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from urllib.parse import urlsplit

USER_AGENT = "gpu-orchestrator-webhook/1"
RESPONSE_READ_MAX = 1024  # of a receiver's answer only this much is read: it is not used, only drained
RETRY_STATUSES = frozenset({408, 429})  # besides every 5xx

Connect = Callable[[tuple[str, int], float], socket.socket]  # socket.create_connection's shape


class Verdict(StrEnum):
    DELIVERED = "DELIVERED"
    RETRY = "RETRY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the verdict, a one-line reason (stored as notify_error), the HTTP status if any."""

    verdict: Verdict
    reason: str
    status: int | None = None


@cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus `ca_file` when given; hostname checks and certificate verification on."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection whose socket goes to one of `addresses` instead of wherever the host name resolves now."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        addresses: Sequence[str],
        context: ssl.SSLContext,
        timeout: float,
        connect: Connect,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._addresses = list(addresses)
        self._tls = context
        self._open = connect
        self._timeout_s = timeout

    def connect(self) -> None:
        last: OSError = OSError("no address to connect to")
        for address in self._addresses:
            try:
                raw = self._open((address, self.port), self._timeout_s)
            except OSError as err:
                last = err
                continue
            try:
                self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
            return
        raise last


def _ipv4_first(addresses: Sequence[str]) -> list[str]:
    return sorted(addresses, key=lambda a: ":" in a)


def _verdict(status: int) -> Answer:
    if 200 <= status < 300:
        return Answer(Verdict.DELIVERED, f"HTTP {status}", status)
    if status in RETRY_STATUSES or status >= 500:
        return Answer(Verdict.RETRY, f"HTTP {status}", status)
    if 300 <= status < 400:
        return Answer(Verdict.FAILED, f"HTTP {status}: redirects are not followed", status)
    return Answer(Verdict.FAILED, f"HTTP {status}", status)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    addresses: Sequence[str],
    context: ssl.SSLContext,
    timeout_s: float,
    connect: Connect = socket.create_connection,
) -> Answer:
    """POST `body` to `url` through one of `addresses` (already checked); each connect and read waits at most
    `timeout_s`."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _PinnedHTTPS(
        parts.hostname or "",
        parts.port or 443,
        addresses=_ipv4_first(addresses),
        context=context,
        timeout=timeout_s,
        connect=connect,
    )
    try:
        conn.request("POST", target, body=body, headers={**headers, "User-Agent": USER_AGENT})
        response = conn.getresponse()
        response.read(RESPONSE_READ_MAX)
        return _verdict(response.status)
    except TimeoutError:
        return Answer(Verdict.RETRY, f"timed out after {timeout_s:g} s")
    except ssl.SSLError as err:
        return Answer(Verdict.RETRY, f"TLS failed: {err.reason or err}")
    except (OSError, http.client.HTTPException) as err:
        return Answer(Verdict.RETRY, f"connection failed: {type(err).__name__}: {err}")
    finally:
        conn.close()
