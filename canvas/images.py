"""What an uploaded file is, and the copy of it that is stored: pure functions over files on disk.

1. `sniff`: the type from the first bytes (the magic numbers), never from the name or the client's Content-Type.
2. `inspect`: the dimensions from the header, refused above the pixel limit *before* any pixel is decoded (a
   decompression bomb is a small file with huge dimensions), then a full decode with Pillow, which must succeed
   and agree with the sniffed type.
3. `strip`: a copy without the metadata that can identify a person or place (EXIF with its GPS block, XMP, IPTC,
   text chunks), made at the container level: the compressed image data is copied byte for byte, so nothing is
   re-encoded and no quality is lost. A JPEG's EXIF orientation is kept (as a minimal EXIF holding only that tag)
   so the stored image still displays upright. Copied in blocks, so a large file is never whole in memory.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = 1 << 20
TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
PILLOW_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
ORIENTATION_TAG = 0x0112
# PNG ancillary chunks that carry metadata rather than image data (PNG spec, 11.3 "Textual information", eXIf).
PNG_DROP = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
# JPEG markers: APP1 (EXIF, XMP), APP13 (Photoshop IPTC), COM. APP0 (JFIF), APP2 (ICC profile) and APP14 (Adobe
# colour transform) affect how the pixels are read, so they stay.
JPEG_DROP = {0xE1, 0xED, 0xFE}
WEBP_DROP = {b"EXIF", b"XMP "}
VP8X_EXIF, VP8X_XMP = 0x08, 0x04  # VP8X feature flags (WebP container spec, "Extended file format")


class NotAnImage(ValueError):
    """Not a PNG, JPEG or WebP by its bytes: HTTP 415."""


class BadImage(ValueError):
    """Claims to be an image but does not decode, or is over the pixel limit: HTTP 422."""


@dataclass(frozen=True)
class Checked:
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Stored:
    """The stripped copy: its path, size and sha256."""

    path: Path
    bytes: int
    sha256: str


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


def decode(path: Path, content_type: str) -> None:
    """Decode every pixel: truncated or corrupt data fails here. Only after `header` passed (bounded pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"does not decode as {content_type}: {err}") from None


def strip(src: Path, dst: Path, content_type: str) -> Stored:
    """Write `src` without its metadata to `dst`; the size and sha256 of what was written."""
    writers: dict[str, Callable[[BinaryIO, _Out], None]] = {
        "image/png": _strip_png,
        "image/jpeg": _strip_jpeg,
        "image/webp": _strip_webp,
    }
    with src.open("rb") as fin, dst.open("wb") as raw:
        out = _Out(raw)
        try:
            writers[content_type](fin, out)
        except (struct.error, IndexError) as err:
            raise BadImage(f"malformed {content_type} container: {err}") from None
    return Stored(dst, out.size, out.digest.hexdigest())


class _Out:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.size += len(data)
        self.digest.update(data)


def _copy(fin: BinaryIO, out: _Out, count: int | None = None) -> None:
    """`count` bytes (None: the rest of the file), in blocks."""
    while count is None or count > 0:
        chunk = fin.read(BLOCK if count is None else min(BLOCK, count))
        if not chunk:
            if count is not None:
                raise BadImage("the file ends inside a chunk")
            return
        out.write(chunk)
        if count is not None:
            count -= len(chunk)


def _read(fin: BinaryIO, n: int) -> bytes:
    data = fin.read(n)
    if len(data) != n:
        raise BadImage("the file ends early")
    return data


def _strip_png(fin: BinaryIO, out: _Out) -> None:
    out.write(_read(fin, 8))
    while True:
        head = fin.read(8)
        if not head:
            raise BadImage("PNG without IEND")
        length, kind = struct.unpack(">I4s", _read_rest(head, fin, 8))
        if kind in PNG_DROP:
            fin.seek(length + 4, 1)  # data + CRC
            continue
        out.write(head)
        _copy(fin, out, length + 4)
        if kind == b"IEND":
            return


def _read_rest(head: bytes, fin: BinaryIO, n: int) -> bytes:
    return head if len(head) == n else head + _read(fin, n - len(head))


def _strip_jpeg(fin: BinaryIO, out: _Out) -> None:
    out.write(_read(fin, 2))  # SOI
    orientation_written = False
    while True:
        marker = _read(fin, 2)
        if marker[0] != 0xFF:
            raise BadImage("JPEG segment without a marker")
        code = marker[1]
        if code == 0xFF:  # fill byte before a marker
            fin.seek(-1, 1)
            continue
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # parameterless markers
            out.write(marker)
            continue
        length = struct.unpack(">H", _read(fin, 2))[0]
        if code == 0xDA:  # start of scan: the rest is entropy-coded data and later scans, copied as they are
            out.write(marker + struct.pack(">H", length))
            _copy(fin, out)
            return
        body = _read(fin, length - 2)
        if code in JPEG_DROP:
            orientation = _jpeg_orientation(body) if code == 0xE1 else None
            if orientation not in (None, 1) and not orientation_written:
                out.write(_orientation_app1(orientation))
                orientation_written = True
            continue
        out.write(marker + struct.pack(">H", length) + body)


def _jpeg_orientation(app1: bytes) -> int | None:
    if not app1.startswith(b"Exif\x00\x00"):
        return None
    from PIL import Image

    exif = Image.Exif()
    try:
        exif.load(app1)
    except (SyntaxError, ValueError, struct.error):
        return None
    value = exif.get(ORIENTATION_TAG)
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _orientation_app1(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    body = exif.tobytes()  # b"Exif\0\0" + a TIFF header and one IFD with the one tag
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _strip_webp(fin: BinaryIO, out: _Out) -> None:
    riff = _read(fin, 12)
    declared = struct.unpack("<I", riff[4:8])[0]
    kept: list[tuple[bytes, int, int]] = []  # (fourcc, offset of data, size), to copy after the new header
    position, end = 12, 8 + declared
    while position < end:
        fin.seek(position)
        head = fin.read(8)
        if len(head) < 8:
            break
        fourcc, size = head[:4], struct.unpack("<I", head[4:])[0]
        if fourcc not in WEBP_DROP:
            kept.append((fourcc, position + 8, size))
        position += 8 + size + (size & 1)  # chunks are padded to an even size
    total = 4 + sum(8 + size + (size & 1) for _, _, size in kept)
    out.write(b"RIFF" + struct.pack("<I", total) + b"WEBP")
    for fourcc, offset, size in kept:
        fin.seek(offset)
        out.write(fourcc + struct.pack("<I", size))
        if fourcc == b"VP8X":
            flags = _read(fin, 1)[0] & ~(VP8X_EXIF | VP8X_XMP)
            out.write(bytes([flags]))
            _copy(fin, out, size - 1)
        else:
            _copy(fin, out, size)
        if size & 1:
            out.write(b"\x00")
