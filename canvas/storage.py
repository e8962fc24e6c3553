"""The images in S3: `<prefix><owner>/<image id>.<ext>` in one bucket, through an injected boto3 client.

Uploads go from a file on disk, so the service never holds a whole image in memory: up to `SINGLE_PUT_MAX` bytes
as one PutObject streamed from the open file, carrying the sha256 already computed while the file was written
(`ChecksumSHA256`: S3 checks the bytes it got against it, and boto3 reads the file once, to send it, instead of once
more for a checksum of its own); above that, boto3's managed transfer in parts. Direct uploads are presigned S3
POSTs whose policy fixes the key, the content type and the largest body S3 accepts (`content-length-range`; boto3
`generate_presigned_post`,
https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3/client/generate_presigned_post.html).
Downloads are presigned GETs that live `url_expires_s` seconds.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from .images import TYPES

SINGLE_PUT_MAX = 32 * 1024 * 1024  # larger files go in parts (S3 takes up to 5 GiB in one PutObject)
PART_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    last_modified: Any  # datetime, as boto3 returns it


@dataclass(frozen=True, kw_only=True)
class Storage:
    s3: Any
    bucket: str
    prefix: str
    url_expires_s: int

    def key_for(self, owner: uuid.UUID, image_id: uuid.UUID, content_type: str) -> str:
        return f"{self.prefix}{owner}/{image_id}.{TYPES[content_type]}"

    def put_file(self, path: Path, key: str, content_type: str, *, sha256: str | None = None) -> None:
        """`sha256`: the file's hex digest, when known, which S3 then verifies."""
        size = path.stat().st_size
        if size > SINGLE_PUT_MAX:
            config = TransferConfig(multipart_threshold=SINGLE_PUT_MAX, multipart_chunksize=PART_BYTES)
            self.s3.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=config)
            return
        extra = {"ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode()} if sha256 else {}
        with path.open("rb") as body:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentLength=size, ContentType=content_type, **extra
            )

    def get_file(self, key: str, path: Path) -> None:
        self.s3.download_file(self.bucket, key, str(path))

    def size_of(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key succeeds (S3 DeleteObject)."""
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def download_url(self, key: str, name: str) -> str:
        url: str = self.s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": f'inline; filename="{_ascii_name(name)}"',
            },
            ExpiresIn=self.url_expires_s,
        )
        return url

    def upload_form(self, key: str, content_type: str, max_bytes: int) -> dict[str, Any]:
        """A presigned POST for exactly this key and type, of 1..max_bytes bytes."""
        post: dict[str, Any] = self.s3.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
            ExpiresIn=self.url_expires_s,
        )
        return post

    def listing(self) -> Iterator[Listed]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield Listed(obj["Key"], int(obj["Size"]), obj["LastModified"])


def _ascii_name(name: str) -> str:
    return "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_" for ch in name) or "image"
