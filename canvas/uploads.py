"""An image's life: stored through the service, or uploaded straight to S3 and confirmed; read; deleted.

The order of the writes keeps every row and object paired (state names: migrations/0002_images.sql):
- through the service: strip the file as it arrives, then check it -> row `pending` -> object -> row `ready`. If
  the object write fails the row is removed; if the last row write fails the object and the row are removed.
- direct: row `uploading` -> presigned POST to S3 -> confirm: the object is fetched, checked and stripped like
  an upload, the stripped copy replaces it, the row becomes `ready`; an object that fails the checks is removed
  with its row.
- delete: row `deleting` (hidden at once) -> object removed -> row `deleted` (a tombstone keeping deleted_at).
Whatever a crash leaves between two steps, `reconcile` finds and settles (canvas/reconcile.py).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .db import ImageRow, NewImage, Repo
from .errors import ApiError, not_found
from .images import TYPES, BadImage, NotAnImage, Stored, StripStream, check, sniff, strip
from .storage import Storage

log = logging.getLogger("canvas.uploads")
NAME_MAX = 200


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_upload_bytes: int
    max_direct_bytes: int
    max_pixels: int


def clean_name(raw: str) -> str:
    base = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    cleaned = "".join(ch for ch in base if ch.isprintable())[:NAME_MAX]
    return cleaned or "image"


def checked_copy(src: Path, work: Path, limits: Limits) -> tuple[NewImage, Path]:
    """The stripped copy of `src`, checked (canvas.images.check), as the fields of a new row (id, owner and key
    unset)."""
    with src.open("rb") as fh:
        content_type = sniff(fh.read(16))
    return checked_fields(strip(src, work / "stripped", content_type, max_pixels=limits.max_pixels), limits)


def checked_fields(stripped: Stored, limits: Limits) -> tuple[NewImage, Path]:
    checked = check(stripped, max_pixels=limits.max_pixels)
    fields = NewImage(
        id=uuid.UUID(int=0),
        owner=uuid.UUID(int=0),
        s3_key="",
        name="",
        content_type=checked.content_type,
        bytes=stripped.bytes,
        width=checked.width,
        height=checked.height,
        sha256=stripped.sha256,
    )
    return fields, stripped.path


def refused(err: Exception) -> ApiError:
    if isinstance(err, NotAnImage):
        return ApiError(415, "not_an_image", f"{err}; send a PNG, JPEG or WebP")
    return ApiError(422, "bad_image", str(err))


@dataclass(frozen=True)
class Images:
    repo: Repo
    storage: Storage
    limits: Limits

    def store(self, owner: str, name: str, upload: StripStream) -> ImageRow:
        """An image received through POST /images: its stripped copy written as it arrived (within the byte
        limit), finished and checked here, then stored. The copy is in `upload`'s folder, which the caller
        removes."""
        try:
            fields, stripped = checked_fields(upload.finish(), self.limits)
        except (NotAnImage, BadImage) as err:
            raise refused(err) from None
        image_id = uuid.uuid4()
        key = self.storage.key_for(uuid.UUID(owner), image_id, fields.content_type)
        new = _with(fields, image_id, owner, key, clean_name(name))
        self.repo.insert_image(new, "pending")
        try:
            self.storage.put_file(stripped, key, new.content_type, sha256=new.sha256)
            ready = self.repo.settle_image(image_id, expect="pending")
        except Exception:
            self._forget(image_id, key, "pending")
            raise
        if ready is None:  # reconcile took it as abandoned in between: nothing of it is left
            raise ApiError(503, "upload_lost", "the upload took too long and was cleaned up; send it again")
        return ready

    def presign(self, owner: str, name: str, size: int, content_type: str) -> dict[str, Any]:
        if content_type not in TYPES:
            raise ApiError(415, "not_an_image", f"{content_type!r} is not image/png, image/jpeg or image/webp")
        if size > self.limits.max_direct_bytes:
            raise ApiError(413, "too_large", f"{size} bytes is over the {self.limits.max_direct_bytes}-byte limit")
        image_id = uuid.uuid4()
        key = self.storage.key_for(uuid.UUID(owner), image_id, content_type)
        new = NewImage(
            id=image_id,
            owner=uuid.UUID(owner),
            s3_key=key,
            name=clean_name(name),
            content_type=content_type,
            bytes=size,
        )
        self.repo.insert_image(new, "uploading")
        form = self.storage.upload_form(key, content_type, size)
        return {
            "image_id": str(image_id),
            "url": form["url"],
            "fields": form["fields"],
            "max_bytes": size,
            "expires_in": self.storage.url_expires_s,
            "confirm": f"/images/{image_id}/confirm",
        }

    def confirm(self, owner: str, image_id: uuid.UUID) -> ImageRow:
        row = self.repo.get_image(uuid.UUID(owner), image_id, states=("uploading",))
        if row is None:
            ready = self.repo.get_image(uuid.UUID(owner), image_id)
            if ready is not None:
                return ready  # confirmed already: a repeated confirm answers the same
            raise not_found("upload")
        size = self.storage.size_of(row.s3_key)
        if size is None:
            raise ApiError(409, "not_uploaded", "nothing was uploaded for this image yet; POST the file first")
        if size > self.limits.max_direct_bytes:
            self._forget(row.id, row.s3_key, "uploading")
            raise ApiError(413, "too_large", f"the object is over the {self.limits.max_direct_bytes}-byte limit")
        with tempfile.TemporaryDirectory(prefix="canvas-") as work:
            original = Path(work) / "original"
            self.storage.get_file(row.s3_key, original)
            try:
                fields, stripped = checked_copy(original, Path(work), self.limits)
                if fields.content_type != row.content_type:
                    raise BadImage(f"the upload is {fields.content_type}, not the {row.content_type} announced")
            except (NotAnImage, BadImage) as err:
                self._forget(row.id, row.s3_key, "uploading")
                raise refused(err) from None
            self.storage.put_file(stripped, row.s3_key, fields.content_type, sha256=fields.sha256)
        ready = self.repo.settle_image(
            row.id, expect="uploading", new=_with(fields, row.id, owner, row.s3_key, row.name)
        )
        if ready is None:
            raise not_found("upload")
        return ready

    def delete(self, owner: str, image_id: uuid.UUID) -> None:
        row = self.repo.mark_deleting(uuid.UUID(owner), image_id)
        if row is None:
            raise not_found()
        self.storage.delete(row.s3_key)  # if this fails, reconcile finishes the delete
        self.repo.mark_deleted(row.id)

    def get(self, owner: str, image_id: uuid.UUID) -> ImageRow:
        row = self.repo.get_image(uuid.UUID(owner), image_id)
        if row is None:
            raise not_found()
        return row

    def _forget(self, image_id: uuid.UUID, key: str, state: str) -> None:
        """Undo a half-made image: its object (if S3 took it), then its row. The row goes even when the object's
        delete fails: reconcile's sweep removes objects no row claims. A failure here is logged, never raised over
        the error the caller must see."""
        try:
            self.storage.delete(key)
        except Exception as err:
            log.warning("cleanup: object %s of image %s left to reconcile: %s", key, image_id, err)
        try:
            self.repo.remove_image(image_id, states=(state,))
        except Exception as err:
            log.warning("cleanup: row of image %s left to reconcile: %s", image_id, err)


def _with(fields: NewImage, image_id: uuid.UUID, owner: str, key: str, name: str) -> NewImage:
    """The checked `fields` of a copy (canvas.uploads.checked_fields) as the row of one image."""
    return replace(fields, id=image_id, owner=uuid.UUID(owner), s3_key=key, name=name)


def image_view(row: ImageRow, storage: Storage, *, with_url: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(row.id),
        "name": row.name,
        "content_type": row.content_type,
        "bytes": row.bytes,
        "width": row.width,
        "height": row.height,
        "sha256": row.sha256,
        "created_at": row.created_at.isoformat(),
    }
    if with_url:
        view["url"] = storage.download_url(row.s3_key, row.name)
        view["url_expires_in"] = storage.url_expires_s
    return view
