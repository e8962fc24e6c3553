"""Files in and out, through the artifacts bucket: the service hands out presigned S3 requests and never carries
file bytes itself (a Lambda request or response holds at most 6 MB; inputs may be gigabytes).

- Inputs: `POST /uploads` presigns one S3 POST for `inputs/<caller-slug>/<ulid>/<name>`; the key is what a task's
  `s3_input` param takes (the adapter downloads it before the job runs).
- Outputs: the adapter keeps a task's outputs and its non-empty logs under `results/<task_id>/`, the task's
  `result_uri` (adapter/runner.py). A failed attempt keeps its logs there too but gets no `result_uri`, so that
  prefix is read whenever the task has none.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core import logs
from core.tasks import TaskRecord, new_task_id

from .identity import Caller
from .service import ApiError

log = logging.getLogger("orchestrator.files")
LOGS = ("stdout.txt", "stderr.txt")  # the adapter's names for a job's output streams
NAME_MAX = 200  # with inputs/<slug <= 64>/<ulid 26>/ the key stays within the digest type's 300 characters
MAX_LISTED = 1000  # objects one results answer lists (with `truncated` when there are more)


def safe_name(raw: str) -> str:
    """The file name as one key segment: its last path part, [A-Za-z0-9._-] only (anything else becomes '_'), no
    '..' (the registry's input patterns refuse it), no leading dot or dash, at most NAME_MAX characters with its
    extension kept."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]", "_", base)).lstrip(".-") or "input"
    if len(name) > NAME_MAX:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[: NAME_MAX - len(ext) - 1]}.{ext}" if dot and stem and len(ext) <= 16 else name[:NAME_MAX]
    return name


@dataclass(frozen=True, kw_only=True)
class Artifacts:
    """Presigning and reading in the artifacts bucket with the service's own credentials (`s3`: a boto3 client)."""

    s3: Any
    bucket: str
    upload_max_bytes: int
    upload_expires_s: int
    result_expires_s: int
    log_tail_bytes: int

    def upload(self, caller: Caller, name: str, size: int) -> dict[str, Any]:
        if size > self.upload_max_bytes:
            raise ApiError(422, "upload_too_large", f"{size} bytes is over the {self.upload_max_bytes}-byte limit")
        key = f"{caller.input_prefix}{new_task_id()}/{safe_name(name)}"
        # The policy caps the body at the declared size; S3 refuses a bigger one (EntityTooLarge).
        conditions: list[Any] = [["content-length-range", 0, size]]
        try:
            post = self.s3.generate_presigned_post(
                Bucket=self.bucket, Key=key, Conditions=conditions, ExpiresIn=self.upload_expires_s
            )
        except (ClientError, BotoCoreError) as err:  # presigning is local; only missing credentials get here
            logs.event(log, "presign_failed", logging.ERROR, error=str(err))
            raise ApiError(503, "files_unavailable", "could not presign the upload; retry") from None
        logs.event(log, "upload_presigned", caller=caller.id, key=key, bytes=size)
        return {
            "url": post["url"],
            "fields": post["fields"],
            "key": key,
            "expires_in": self.upload_expires_s,
            "max_bytes": size,
        }

    def prefix_of(self, task: TaskRecord) -> str:
        """The task's results prefix: its result_uri, which must be the adapter's layout in this bucket."""
        expected = f"results/{task.task_id}/"
        if task.result_uri is not None and task.result_uri != f"s3://{self.bucket}/{expected}":
            raise ApiError(409, "results_elsewhere", f"task {task.task_id} keeps its results at {task.result_uri}")
        return expected

    def results(self, task: TaskRecord) -> dict[str, Any]:
        prefix = self.prefix_of(task)
        objects: list[dict[str, Any]] = []
        truncated = False
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    if len(objects) == MAX_LISTED:
                        truncated = True
                        break
                    url = self.s3.generate_presigned_url(
                        "get_object",
                        Params={"Bucket": self.bucket, "Key": obj["Key"]},
                        ExpiresIn=self.result_expires_s,
                    )
                    name = obj["Key"][len(prefix) :]
                    objects.append({"name": name, "key": obj["Key"], "size": int(obj["Size"]), "url": url})
                if truncated:
                    break
        except (ClientError, BotoCoreError) as err:
            logs.event(log, "results_list_failed", logging.ERROR, task_id=task.task_id, error=str(err))
            message = f"could not list the results of task {task.task_id}; retry"
            raise ApiError(503, "files_unavailable", message) from None
        return {
            "task_id": task.task_id,
            "status": task.status.value,
            "result_uri": task.result_uri,
            "objects": objects,
            "truncated": truncated,
            "expires_in": self.result_expires_s,
        }

    def logs(self, task: TaskRecord) -> dict[str, Any]:
        prefix = self.prefix_of(task)
        out: dict[str, Any] = {"task_id": task.task_id, "status": task.status.value}
        for name in LOGS:
            out[name.removesuffix(".txt")] = self._tail(task.task_id, prefix + name)
        return out

    def _tail(self, task_id: str, key: str) -> dict[str, Any]:
        """The last log_tail_bytes of one log (a suffix range: the rest is never read)."""
        limit = self.log_tail_bytes
        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=-{limit}")
            raw = got["Body"].read()
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):  # the adapter uploads no empty log; a task not run yet has none
                return {"text": "", "size": 0, "truncated": False, "present": False}
            if code == "InvalidRange":  # an empty object has no last bytes
                return {"text": "", "size": 0, "truncated": False, "present": True}
            logs.event(log, "log_read_failed", logging.ERROR, task_id=task_id, key=key, error=str(err))
            raise ApiError(503, "files_unavailable", f"could not read the logs of task {task_id}; retry") from None
        except BotoCoreError as err:
            logs.event(log, "log_read_failed", logging.ERROR, task_id=task_id, key=key, error=str(err))
            raise ApiError(503, "files_unavailable", f"could not read the logs of task {task_id}; retry") from None
        total = _total_size(got.get("ContentRange"), len(raw))
        truncated = total > len(raw)
        if truncated:
            # The cut may fall inside a UTF-8 character: drop its continuation bytes rather than show U+FFFD.
            cut = 0
            while cut < min(3, len(raw)) and 0x80 <= raw[cut] < 0xC0:
                cut += 1
            raw = raw[cut:]
        return {"text": raw.decode("utf-8", "replace"), "size": total, "truncated": truncated, "present": True}


def _total_size(content_range: str | None, fallback: int) -> int:
    """`bytes 100-199/200` -> 200 (S3 answers a suffix range with one)."""
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return fallback
