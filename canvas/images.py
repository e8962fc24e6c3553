"""What an uploaded file is, and the copy of it that is stored: pure functions over files on disk.

1. `sniff`: the type from the first bytes (the magic numbers), never from the name or the client's Content-Type.
2. `inspect`: the dimensions from the header, refused above the pixel limit *before* any pixel is decoded (a
   decompression bomb is a small file with huge dimensions), then a full decode with Pillow, which must succeed
   and agree with the sniffed type.
3. `strip`: a copy without the metadata that can identify a person or place (EXIF with its GPS block, XMP, IPTC,
   text chunks), made at the container level: the compressed image data is copied byte for byte, so nothing is
   re-encoded and no quality is lost. A JPEG's EXIF orientation is kept (as a minimal EXIF holding only that tag)
   so the stored image still displays upright. Copied in blocks, so a large file is never whole in memory; the
   size and sha256 of the copy are computed as it is written.
4. `StripStream`: the same strip fed the bytes as they arrive (POST /images), so the upload is read once: the
   stripped copy is what reaches the disk. PNG and JPEG are stripped on the fly; a WebP (whose RIFF header holds
   the size of what follows) is spooled and stripped when it is complete.

The PNG and JPEG strippers are written once, as generators of steps ("read n bytes", "copy n bytes", "skip n
bytes") that a driver satisfies from a file or from pieces pushed in, so both paths run the same parsing code.
Given a pixel limit, the PNG stripper also checks the pixel data as it passes: IHDR's dimensions against the limit
before anything is inflated, then the IDAT stream inflated (in bounded pieces, the output discarded) to exactly
the bytes those dimensions need, every scanline with a known filter type: the faults Pillow's PNG decoder reports
(a corrupt or short zlib stream, an unknown filter type) are found without building the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .strip_steps import BLOCK, MALFORMED, BadImage, Driver, NotAnImage, Out, steps_for, strip_webp

TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
PILLOW_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
SNIFF_BYTES = 16


@dataclass(frozen=True)
class Checked:
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Stored:
    """The stripped copy: its path, size and sha256; `decoded`: its pixel data was checked while it was copied (a
    PNG stripped with a pixel limit), so `check` needs no second pass over it."""

    path: Path
    bytes: int
    sha256: str
    content_type: str = ""
    decoded: bool = False


def sniff(head: bytes) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    raise NotAnImage("not a PNG, JPEG or WebP image")


def inspect(path: Path, *, max_pixels: int) -> Checked:
    """`header`, then `decode`: the whole check."""
    checked = header(path, max_pixels=max_pixels)
    decode(path, checked.content_type)
    return checked


def header(path: Path, *, max_pixels: int) -> Checked:
    """Type and dimensions from the header alone; over the pixel limit is refused here, before any decoding."""
    from PIL import Image, UnidentifiedImageError

    with path.open("rb") as fh:
        content_type = sniff(fh.read(16))
    try:
        with Image.open(path) as img:
            width, height = img.size
            found = img.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"does not decode as {content_type}: {err}") from None
    if found != PILLOW_FORMAT[content_type]:
        raise BadImage(f"the bytes start like {content_type} but decode as {found}")
    if width * height > max_pixels:
        raise BadImage(f"{width}x{height} is over the {max_pixels}-pixel limit")
    return Checked(content_type, width, height)


def decode(path: Path, content_type: str, *, bounded: bool = False) -> None:
    """Decode the image: truncated or corrupt data fails here. Only after `header` passed (bounded pixels).
    `bounded`: a JPEG is decoded at 1/8 scale (Pillow's `draft`): every block's entropy-coded data is still read
    and checked, only the inverse DCT and the pixels it would produce are cut down."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if bounded and content_type == "image/jpeg":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"does not decode as {content_type}: {err}") from None


def check(stored: Stored, *, max_pixels: int) -> Checked:
    """The checks a stripped copy needs before it is stored: `header`, then a bounded `decode` unless its pixel
    data was checked while it was stripped."""
    checked = header(stored.path, max_pixels=max_pixels)
    if not stored.decoded:
        decode(stored.path, checked.content_type, bounded=True)
    return checked


def strip(src: Path, dst: Path, content_type: str, *, max_pixels: int | None = None) -> Stored:
    """Write `src` without its metadata to `dst`; the size and sha256 of what was written. With `max_pixels`, a
    PNG's pixel data is checked on the way (module docstring)."""
    with src.open("rb") as fin, dst.open("wb") as raw:
        out = Out(raw)
        try:
            if content_type == "image/webp":
                strip_webp(fin, out)
                decoded = False
            else:
                driver = Driver(steps_for(content_type, out, max_pixels), out)
                while chunk := fin.read(BLOCK):
                    driver.feed(memoryview(chunk))
                    if driver.done:
                        break
                decoded = driver.end()
            digest = out.finish()
        except MALFORMED as err:
            raise BadImage(f"malformed {content_type} container: {err}") from None
        finally:
            out.close()
    return Stored(dst, out.size, digest, content_type, decoded)


class StripStream:
    """`strip` of a file that arrives in pieces: `write` each as it comes, then `finish` (after the last) gives the
    stripped copy at `dst`. The type comes from the first bytes. A refusal (not an image, a malformed one) is kept
    and raised by `finish`, so the caller reads the whole body first and its own checks (size limit) come first."""

    def __init__(self, dst: Path, *, max_pixels: int) -> None:
        self.dst = dst
        self.max_pixels = max_pixels
        self.content_type: str | None = None
        self.received = 0
        self._head = bytearray()
        self._error: ValueError | None = None
        self._fh: BinaryIO = dst.open("wb")
        self._out = Out(self._fh)
        self._driver: Driver | None = None
        self._spool: BinaryIO | None = None  # a WebP, stripped once complete

    def write(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        if self._error is not None:
            return
        try:
            view = memoryview(data)
            if self.content_type is None:
                need = SNIFF_BYTES - len(self._head)
                self._head += view[:need]
                view = view[need:]
                if len(self._head) < SNIFF_BYTES:
                    return
                self._start()
            self._feed(view)
        except (NotAnImage, BadImage) as err:
            self._error = err
        except MALFORMED as err:
            self._error = BadImage(f"malformed {self.content_type} container: {err}")

    def finish(self) -> Stored:
        try:
            if self._error is None and self.content_type is None:
                try:
                    self._start()  # shorter than the sniffed prefix
                except NotAnImage as err:
                    self._error = err
            if self._error is not None:
                raise self._error
            assert self.content_type is not None
            decoded = False
            if self._spool is not None:
                self._spool.seek(0)
                try:
                    strip_webp(self._spool, self._out)
                except MALFORMED as err:
                    raise BadImage(f"malformed {self.content_type} container: {err}") from None
            elif self._driver is not None:
                decoded = self._driver.end()
            return Stored(self.dst, self._out.size, self._out.finish(), self.content_type, decoded)
        finally:
            self.close()

    def close(self) -> None:
        self._out.close()
        for fh in (self._fh, self._spool):
            if fh is not None and not fh.closed:
                fh.close()

    def _start(self) -> None:
        head, self._head = bytes(self._head), bytearray()
        self.content_type = sniff(head)
        if self.content_type == "image/webp":
            self._spool = self.dst.with_name(self.dst.name + ".received").open("w+b")
        else:
            self._driver = Driver(steps_for(self.content_type, self._out, self.max_pixels), self._out)
        self._feed(memoryview(head))

    def _feed(self, view: memoryview) -> None:
        if self._spool is not None:
            self._spool.write(view)
        elif self._driver is not None:
            self._driver.feed(view)
