"""The strippers under canvas/images.py: container-level parsers of PNG chunks, JPEG segments and WebP RIFF chunks,
written once as generators of steps ("read n bytes", "copy n bytes", "skip n bytes") that `Driver` satisfies from
pieces pushed in (or a file read in blocks), so the streamed and the on-disk paths run the same code. See the
docstring of canvas/images.py for what is dropped and what the PNG pixel check proves."""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Callable, Generator
from typing import BinaryIO, cast

# zlib-ng's inflate behind zlib's own API: the PNG pixel check runs on the request's thread while the body arrives,
# and zlib-ng inflates a 4 MB noise PNG's image data in 0.55 ms against the stdlib zlib's 2.19 ms (best of 10).
from zlib_ng import zlib_ng

# zlib-ng's stub declares its error as an instance (`error: Exception`); at run time it is the exception class.
InflateError = cast(type[Exception], zlib_ng.error)

BLOCK = 1 << 20
OUT_BLOCK = 1 << 20  # what Out hands its thread at a time
OUT_QUEUE = 2  # blocks that may wait for it


class NotAnImage(ValueError):
    """Not a PNG, JPEG or WebP by its bytes: HTTP 415."""


class BadImage(ValueError):
    """Claims to be an image but does not decode, or is over the pixel limit: HTTP 422."""


# What a truncated or malformed container raises from the parsers below (a short struct, an index past the end, a
# corrupt zlib stream): callers turn these into BadImage.
MALFORMED = (struct.error, IndexError, InflateError)

ORIENTATION_TAG = 0x0112
# PNG ancillary chunks that carry metadata rather than image data (PNG spec, 11.3 "Textual information", eXIf).
PNG_DROP = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
# JPEG markers: APP1 (EXIF, XMP), APP13 (Photoshop IPTC), COM. APP0 (JFIF), APP2 (ICC profile) and APP14 (Adobe
# colour transform) affect how the pixels are read, so they stay.
JPEG_DROP = {0xE1, 0xED, 0xFE}
WEBP_DROP = {b"EXIF", b"XMP "}
VP8X_EXIF, VP8X_XMP = 0x08, 0x04  # VP8X feature flags (WebP container spec, "Extended file format")
# PNG colour type -> samples per pixel (PNG spec, 11.2.2 IHDR); Adam7 passes as (x0, y0, dx, dy) (8.2 Interlacing).
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class Out:
    """The stripped copy: written to `fh` and hashed (sha256), in blocks of OUT_BLOCK bytes on a thread of its own
    once a whole block is ready, so that hashing and writing (both let go of the interpreter lock) overlap the
    parsing and inflating the caller does meanwhile, and the request's next chunks arriving: feeding a 4 MB noise PNG
    through StripStream keeps the caller's thread busy 3.3-4.0 ms instead of 8.2-9.4 ms, and bench/canvas.py's
    upload ratio went from 0.66-0.67 to 0.72-0.73 on a quiet machine (paired runs). At most OUT_QUEUE blocks wait for
    the thread (`write` waits beyond that), so memory stays bounded whatever the file's size.

    `finish` after the last write: the hex digest, with everything written and flushed; it raises what the thread
    met (a full disk). `close` stops the thread without finishing (a refused or abandoned upload)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = 0
        self._digest = hashlib.sha256()
        self._block = bytearray()
        self._blocks: queue.Queue[bytearray | None] = queue.Queue(maxsize=OUT_QUEUE)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._block += data
        if len(self._block) >= OUT_BLOCK:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="canvas-strip-out", daemon=True)
                self._thread.start()
            block, self._block = self._block, bytearray()
            self._blocks.put(block)

    def finish(self) -> str:
        block, self._block = self._block, bytearray()
        if self._thread is None:
            self._consume(block)
        else:
            self._blocks.put(block)
            self._stop()
        if self._error is not None:
            raise self._error
        self.fh.flush()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._block = bytearray()
        if self._thread is not None:
            self._error = self._error or RuntimeError("closed before finish")  # the thread drops what is left
            self._stop()

    def _stop(self) -> None:
        assert self._thread is not None
        self._blocks.put(None)
        self._thread.join()
        self._thread = None

    def _drain(self) -> None:
        while (block := self._blocks.get()) is not None:
            if self._error is None:
                try:
                    self._consume(block)
                except BaseException as err:  # raised to the caller by finish
                    self._error = err

    def _consume(self, block: bytearray) -> None:
        self.fh.write(block)
        self._digest.update(block)


# A step of a stripper: ("read", n, None) is answered with the next n bytes; ("copy", n, tap) writes the next n
# bytes (None: all the rest) to the output, ("skip", n, tap) passes over them, each also handing them to `tap`
# when one is given. The generator returns True when it checked the pixel data on the way.
Tap = Callable[[memoryview], None] | None
Step = tuple[str, int | None, Tap]
Steps = Generator[Step, bytes, bool]  # sent: the bytes of a "read" (b"" after the others)


class Driver:
    """Runs a stripper's steps over pieces of input as they are pushed in; `end` when there is no more."""

    def __init__(self, steps: Steps, out: Out) -> None:
        self.steps = steps
        self.out = out
        self.buffer = bytearray()  # what a pending "read" has so far
        self.done = False
        self.decoded = False
        self.step: Step = ("read", 0, None)
        self._next(b"", first=True)

    def feed(self, view: memoryview) -> None:
        pos = 0
        while not self.done and pos < len(view):
            kind, count, tap = self.step
            if kind == "read":
                assert count is not None
                take = view[pos : pos + count - len(self.buffer)]
                self.buffer += take
                pos += len(take)
                if len(self.buffer) == count:
                    data = bytes(self.buffer)
                    self.buffer.clear()
                    self._next(data)
                continue
            take = view[pos:] if count is None else view[pos : pos + count]
            pos += len(take)
            if kind == "copy":
                self.out.write(take)
            if tap is not None:
                tap(take)
            if count is not None:
                if len(take) < count:
                    self.step = (kind, count - len(take), tap)
                else:
                    self._next(b"")

    def end(self) -> bool:
        """The input is complete: the steps must be finished (or copying the rest); True if pixels were checked."""
        if not self.done and self.step[0] == "copy" and self.step[1] is None:
            self._next(b"")
        if not self.done:
            raise BadImage("the file ends before its image data does")
        return self.decoded

    def _next(self, value: bytes, *, first: bool = False) -> None:
        try:
            self.step = next(self.steps) if first else self.steps.send(value)
            while self.step[1] == 0:  # nothing to wait for
                self.step = self.steps.send(b"")
        except StopIteration as stop:
            self.done, self.decoded = True, bool(stop.value)


def steps_for(content_type: str, out: Out, max_pixels: int | None) -> Steps:
    if content_type == "image/png":
        return png_steps(out, max_pixels)
    if content_type == "image/jpeg":
        return jpeg_steps(out)
    raise NotAnImage(f"{content_type} is not stripped as a stream")


def png_steps(out: Out, max_pixels: int | None) -> Steps:
    out.write((yield ("read", 8, None)))
    pixels: PngPixels | None = None
    while True:
        head = yield ("read", 8, None)
        length, kind = struct.unpack(">I4s", head)
        if kind in PNG_DROP:
            yield ("skip", length + 4, None)  # data + CRC
            continue
        out.write(head)
        if kind == b"IHDR":
            if length != 13:
                raise BadImage("PNG header of the wrong size")
            body = yield ("read", length + 4, None)
            out.write(body)
            if max_pixels is not None:
                pixels = PngPixels(body[:13], max_pixels)
            continue
        if kind == b"IDAT" and max_pixels is not None:
            if pixels is None:
                raise BadImage("PNG image data before its header")
            yield ("copy", length, pixels.feed)
            yield ("copy", 4, None)
            continue
        yield ("copy", length + 4, None)
        if kind == b"IEND":
            if pixels is not None:
                pixels.finish()
            return pixels is not None


class PngPixels:
    """Inflates a PNG's IDAT stream as it passes, in bounded pieces, to exactly the bytes the header's dimensions
    need (one filter-type byte and the packed samples per scanline, per Adam7 pass if interlaced), checking every
    filter type; the inflated bytes are dropped."""

    PIECE = 1 << 20

    def __init__(self, ihdr: bytes, max_pixels: int) -> None:
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
        if width == 0 or height == 0:
            raise BadImage("PNG of zero width or height")
        if width * height > max_pixels:
            raise BadImage(f"{width}x{height} is over the {max_pixels}-pixel limit")
        if colour not in PNG_SAMPLES or depth not in (1, 2, 4, 8, 16) or interlace not in (0, 1):
            raise BadImage("PNG header with an unknown colour type, bit depth or interlace method")
        bits = PNG_SAMPLES[colour] * depth
        passes = ((0, 0, 1, 1),) if interlace == 0 else ADAM7
        self.passes: list[tuple[int, int]] = []  # (rows, bytes per row with its filter byte)
        for x0, y0, dx, dy in passes:
            cols, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if cols > 0 and rows > 0:
                self.passes.append((rows, 1 + (cols * bits + 7) // 8))
        self.inflater = zlib_ng.decompressobj()
        self.pass_index = 0
        self.offset = 0  # into the current pass

    def feed(self, data: memoryview) -> None:
        pending: bytes | memoryview = data
        while pending and self.pass_index < len(self.passes):
            if self.inflater.eof:
                return  # Pillow also ignores what follows the zlib stream; `finish` says if it was too short
            try:
                inflated = self.inflater.decompress(pending, self.PIECE)
            except InflateError as err:
                raise BadImage(f"PNG image data does not inflate: {err}") from None
            pending = self.inflater.unconsumed_tail
            self._scanlines(inflated)

    def finish(self) -> None:
        if self.pass_index < len(self.passes):
            raise BadImage("PNG image data ends before the last scanline")

    def _scanlines(self, data: bytes) -> None:
        at = 0
        while at < len(data) and self.pass_index < len(self.passes):
            rows, stride = self.passes[self.pass_index]
            take = min(len(data) - at, rows * stride - self.offset)
            first = (-self.offset) % stride  # where the next filter-type byte lies in this piece
            filters = data[at + first : at + take : stride]
            if filters and max(filters) > 4:
                raise BadImage("PNG scanline with an unknown filter type")
            at += take
            self.offset += take
            if self.offset == rows * stride:
                self.pass_index, self.offset = self.pass_index + 1, 0


def jpeg_steps(out: Out) -> Steps:
    out.write((yield ("read", 2, None)))  # SOI
    orientation_written = False
    while True:
        marker = yield ("read", 2, None)
        if marker[0] != 0xFF:
            raise BadImage("JPEG segment without a marker")
        while marker[1] == 0xFF:  # fill bytes before a marker
            marker = b"\xff" + (yield ("read", 1, None))
        code = marker[1]
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # parameterless markers
            out.write(marker)
            continue
        size = yield ("read", 2, None)
        length = struct.unpack(">H", size)[0]
        if length < 2:
            raise BadImage("JPEG segment of a negative length")
        if code == 0xDA:  # start of scan: the rest is entropy-coded data and later scans, copied as they are
            out.write(marker + size)
            yield ("copy", None, None)
            return False
        body = yield ("read", length - 2, None)
        if code in JPEG_DROP:
            orientation = jpeg_orientation(body) if code == 0xE1 else None
            if orientation not in (None, 1) and not orientation_written:
                out.write(orientation_app1(orientation))
                orientation_written = True
            continue
        out.write(marker + size + body)


def copy_bytes(fin: BinaryIO, out: Out, count: int | None = None) -> None:
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


def read_exact(fin: BinaryIO, n: int) -> bytes:
    data = fin.read(n)
    if len(data) != n:
        raise BadImage("the file ends early")
    return data


def jpeg_orientation(app1: bytes) -> int | None:
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


def orientation_app1(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    body = exif.tobytes()  # b"Exif\0\0" + a TIFF header and one IFD with the one tag
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def strip_webp(fin: BinaryIO, out: Out) -> None:
    riff = read_exact(fin, 12)
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
            flags = read_exact(fin, 1)[0] & ~(VP8X_EXIF | VP8X_XMP)
            out.write(bytes([flags]))
            copy_bytes(fin, out, size - 1)
        else:
            copy_bytes(fin, out, size)
        if size & 1:
            out.write(b"\x00")
