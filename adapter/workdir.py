"""The work dir's file handling: never through a link a job left, never blocking on a FIFO, never touching what a
link points to (adapter/runner.py's docstring says why)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

# Opens that never follow a link in the last component, and never block on a FIFO a job left in place of a file.
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def log_file(path: Path) -> BinaryIO:
    """A job log, created or truncated, never through a link (_root removed any; O_NOFOLLOW if one came back)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644), "wb")


def log_tail(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - 1000))
        return fh.read(1000).decode("utf-8", "replace").strip()


def lstat_mode(path: Path) -> int | None:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None


def remove(path: Path) -> None:
    """Remove `path` whatever it is; a link is removed itself, never what it points to."""
    mode = lstat_mode(path)
    if mode is None:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)  # fd-based: it does not follow links inside, even swapped in
    else:
        path.unlink(missing_ok=True)


def real_dir(path: Path) -> None:
    """`path` as a real directory: anything else there (a link, a file) is removed first."""
    mode = lstat_mode(path)
    if mode is not None and stat.S_ISDIR(mode):
        return
    if mode is not None:
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def empty(*paths: Path) -> None:
    """Remove what an attempt left: directories' contents (the directories stay), non-empty files, and any link
    (itself: a link is never followed, so the directory or file it points to is never touched)."""
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as entries:
                for entry in entries:
                    remove(Path(entry.path))
        elif not stat.S_ISREG(st.st_mode) or st.st_size > 0:  # empty logs are never uploaded: leave them be
            path.unlink(missing_ok=True)
