"""Webhooks: which URLs a task may name, where a delivery may connect, and how a delivery is signed.

- `check_url` (the API, at submit): https only, a host name or a public IP literal, no credentials, no fragment, at
  most 2048 characters. Syntax only: a name can resolve anywhere, and again differently later.
- `public_addresses` (the webhook function, at every delivery): resolve the host and refuse the delivery when any
  address is private, loopback, link-local (169.254.0.0/16 holds the instance metadata service), multicast,
  reserved or unspecified; the connection then goes to exactly the address checked, so a DNS answer that changes
  between the check and the connect (rebinding) cannot redirect it.
- `sign`/`verify`: `X-Gpuq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, the timestamp
  inside the signed bytes so a captured delivery cannot be replayed later than the receiver's tolerance
  (`verify(..., tolerance_s=300)`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
SIGNATURE_HEADER = "X-Gpuq-Signature"
EVENT_ID_HEADER = "X-Gpuq-Event-Id"
TOLERANCE_S = 300
_LOOPBACK_OK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

Resolver = Callable[[str, int], list[str]]


class WebhookRefused(ValueError):
    """The URL or its resolved address may not be a webhook target. str() says why, in one line."""


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> bool:
    if allow_loopback and any(address in net for net in _LOOPBACK_OK):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _forbidden(address.ipv4_mapped, allow_loopback=allow_loopback)
    return not address.is_global or address.is_multicast


def check_url(url: str, *, allow_loopback: bool = False) -> str:
    """The URL as given if it may be a webhook, else WebhookRefused."""
    if not isinstance(url, str) or not url:
        raise WebhookRefused("notify URL must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise WebhookRefused(f"notify URL is longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise WebhookRefused("notify URL must use https")
    if parts.username or parts.password:
        raise WebhookRefused("notify URL must not carry credentials")
    if parts.fragment:
        raise WebhookRefused("notify URL must not have a fragment")
    host = parts.hostname
    if not host:
        raise WebhookRefused("notify URL has no host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise WebhookRefused("notify URL has an invalid port") from None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if (host.rstrip(".").lower() == "localhost" or host.endswith(".localhost")) and not allow_loopback:
            raise WebhookRefused("notify URL must not target localhost") from None
        return url
    if _forbidden(address, allow_loopback=allow_loopback):
        raise WebhookRefused(f"notify URL must not target a private, loopback or link-local address ({address})")
    return url


def _system_resolver(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def public_addresses(url: str, *, allow_loopback: bool = False, resolve: Resolver = _system_resolver) -> list[str]:
    """The addresses `url`'s host resolves to, all of them public (else WebhookRefused): connect to one of these."""
    check_url(url, allow_loopback=allow_loopback)
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        found = resolve(host, parts.port or 443)
    except OSError as err:
        raise WebhookRefused(f"notify host {host} does not resolve: {err}") from None
    if not found:
        raise WebhookRefused(f"notify host {host} does not resolve")
    for raw in found:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if _forbidden(address, allow_loopback=allow_loopback):
            raise WebhookRefused(f"notify host {host} resolves to a non-public address ({address})")
    return found


def sign(secret: bytes, body: bytes, *, at_s: int | None = None) -> str:
    """The signature header's value for `body` sent at `at_s` (default now)."""
    t = int(time.time()) if at_s is None else at_s
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: bytes, body: bytes, header: str, *, tolerance_s: int = TOLERANCE_S, now_s: int | None = None
) -> bool:
    """What a receiver does: the signature matches and its timestamp is within `tolerance_s` of now."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    now = int(time.time()) if now_s is None else now_s
    if abs(now - t) > tolerance_s:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
