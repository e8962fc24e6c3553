"""A throwaway PostgreSQL server for tests and `make canvas`: initdb in a temp dir, listening only on a unix
socket in that dir (no TCP at all), stopped and removed by whoever started it.

Uses the PostgreSQL binaries on this machine (Debian's: /usr/lib/postgresql/<major>/bin, or PG_BIN). PostgreSQL
refuses to run as root; when this process is root the server runs as `nobody`, owning only its temp dir.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30
PORT = 5432  # only names the socket file (.s.PGSQL.5432); nothing listens on TCP


class NoPostgres(RuntimeError):
    """No PostgreSQL binaries on this machine."""


def pg_bin() -> Path:
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(str(Path(which).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise NoPostgres("no PostgreSQL binaries (initdb, pg_ctl): install postgresql or set PG_BIN")


@dataclass(frozen=True)
class LocalPostgres:
    socket_dir: Path
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={PORT}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return self.url(name)


def _runner() -> tuple[str, dict[str, object]]:
    """The OS user the server runs as, and the subprocess arguments that switch to it."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, {}
    nobody = pwd.getpwnam("nobody")
    return "nobody", {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@contextmanager
def local_postgres(*, keep_log: Path | None = None) -> Iterator[LocalPostgres]:
    binaries = pg_bin()
    user, switch = _runner()
    root = Path(tempfile.mkdtemp(prefix="canvas-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if switch:
        for path in (root, sock):
            os.chown(path, int(switch["user"]), int(switch["group"]))  # type: ignore[call-overload]
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C", "LC_ALL": "C"}
    log = root / "server.log"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, env=env, capture_output=True, timeout=START_TIMEOUT_S, **switch)  # type: ignore[call-overload]

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses='' -c unix_socket_directories={sock} -c port={PORT} -c fsync=off"
        run(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        try:
            yield LocalPostgres(sock, user)
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"PostgreSQL failed to start: {detail[0]} (log: {log})") from None
    finally:
        if keep_log is not None and log.exists():
            shutil.copy(log, keep_log)
        shutil.rmtree(root, ignore_errors=True)
