"""A moto server for tests and the demo: on 127.0.0.1 only, on a free port, stopped by whoever started it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server(*, quiet: bool = True, port: int = 0) -> Iterator[str]:
    """Yields the endpoint URL of a moto server running in a thread of this process; port 0 picks a free one."""
    from moto.server import ThreadedMotoServer

    if quiet:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per AWS call drowns the output
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
