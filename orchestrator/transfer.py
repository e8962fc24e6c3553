"""File transfers of the CLI, straight between this machine and S3 through the presigned requests the service
hands out (the service never carries file bytes). Progress bars (tqdm) only when stderr is a terminal."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import httpx
from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.utils import CallbackIOWrapper  # type: ignore[import-untyped]

from .client import TransferError

TIMEOUT = httpx.Timeout(30.0, read=300.0, write=300.0)  # a slow link may take minutes per chunk, never forever
CHUNK = 1024 * 1024


def _bar(err: TextIO, total: int | None, desc: str) -> Any:
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=err,
        disable=not err.isatty(),
        leave=True,
    )


def upload(grant: dict[str, Any], path: Path, err: TextIO) -> None:
    """POST the file to S3 with the presigned form: its fields first, the file last (S3 ignores fields after it)."""
    size = path.stat().st_size
    with path.open("rb") as fh, _bar(err, size, path.name) as bar:
        counted = CallbackIOWrapper(bar.update, fh, "read")
        try:
            resp = httpx.post(
                grant["url"],
                data=grant["fields"],
                files={"file": (path.name, counted, "application/octet-stream")},
                timeout=TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise TransferError(0, f"cannot reach S3 to upload {path}: {exc}") from None
    if resp.status_code >= 300:
        raise TransferError(resp.status_code, f"upload of {path} refused: HTTP {resp.status_code}: {_s3_message(resp)}")


def safe_target(root: Path, name: str) -> Path:
    """Where result `name` (a path under the task's results prefix) goes under `root`; never outside it."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise TransferError(400, f"refusing to write result {name!r}: not a plain relative path")
    return root.joinpath(*parts)


def download(url: str, target: Path, size: int | None, err: TextIO) -> None:
    """GET a presigned URL into `target`, through a .part file renamed at the end (never a half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT) as resp:
            if resp.status_code != 200:
                resp.read()
                raise TransferError(resp.status_code, f"download of {target.name} refused: HTTP {resp.status_code}")
            total = int(resp.headers.get("content-length") or size or 0) or None
            with partial.open("wb") as fh, _bar(err, total, target.name) as bar:
                for chunk in resp.iter_bytes(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
        os.replace(partial, target)
    except httpx.HTTPError as exc:
        raise TransferError(0, f"cannot reach S3 to download {target.name}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _s3_message(resp: httpx.Response) -> str:
    """S3's error document names a code and a message; show those, not the XML."""
    text = resp.text
    code = _between(text, "<Code>", "</Code>")
    message = _between(text, "<Message>", "</Message>")
    return f"{code}: {message}" if code else text[:200]


def _between(text: str, start: str, end: str) -> str:
    _, found, rest = text.partition(start)
    return rest.partition(end)[0] if found else ""
