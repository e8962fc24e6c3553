"""The system resolver for webhook hosts, telling a name that does not exist from a lookup that failed for now.

core.webhook.public_addresses turns an OSError of the resolver into WebhookRefused (final). A name with no
address (EAI_NONAME, EAI_NODATA) is final indeed; a temporary failure (EAI_AGAIN, a timeout) is not, so it is
raised as ResolveFailed, which is no OSError: it passes through public_addresses and the delivery is retried.
getaddrinfo's error codes: https://docs.python.org/3/library/socket.html#socket.getaddrinfo
"""

from __future__ import annotations

import socket

_FINAL = {code for code in (getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_FAMILY")) if code}


class ResolveFailed(Exception):
    """The host's addresses could not be looked up now; a later delivery may succeed."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        if err.errno in _FINAL:
            raise  # an OSError: public_addresses refuses the host
        raise ResolveFailed(f"notify host {host} did not resolve now: {err}") from None
    return sorted({str(info[4][0]) for info in infos})
