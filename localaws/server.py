"""A moto server for tests and the demo: on 127.0.0.1 only, on a free port, stopped by whoever started it; and a
program of ours in the background (`background`), stopped the same way.

Every server has the Auto Scaling model of localaws/autoscaling.py installed (moto's backends are in this process)
and its background tick running while the server runs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUTOSCALING_TICK_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server(*, quiet: bool = True, port: int = 0, tick_s: float = AUTOSCALING_TICK_S) -> Iterator[str]:
    """Yields the endpoint URL of a moto server running in a thread of this process; port 0 picks a free one.
    `tick_s`: how often the Auto Scaling model advances by itself (lifecycle hook timeouts, pool preparation)."""
    from moto.server import ThreadedMotoServer

    from localaws import autoscaling, dynamodb_atomic, streams

    if quiet:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per AWS call drowns the output
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    autoscaling.install()
    streams.install()  # moto's own (Docker) delivery off: localaws/streams.py polls the mappings
    dynamodb_atomic.install()  # transactions and conditional writes applied one at a time, as AWS does
    server.start()
    try:
        with autoscaling.ticking(tick_s):
            yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def background(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, stop_s: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` in the repository root, in a session of its own, its output appended to `log_path`. On exit it gets
    SIGTERM, as systemd would send it (the adapter and the canvas stop warmly), its whole process group SIGKILL
    after `stop_s`: nothing it started outlives the block."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
