"""Receive the one file of a `multipart/form-data` body, streamed to a sink as it arrives.

Starlette's form parser would spool the file too, but it has no limit on a file part's size; here the body is fed
chunk by chunk to python-multipart's push parser, the file part goes straight to the sink (for POST /images,
canvas.images.StripStream: the stripped copy is what reaches the disk), and the request stops with 413 as soon as
the part passes the limit, without reading the rest of the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

FIELD = "file"  # the form field that carries the image
MAX_OTHER_FIELD_BYTES = 4096


class Sink(Protocol):
    def write(self, data: memoryview, /) -> object: ...


@dataclass(frozen=True)
class Received:
    filename: str
    bytes: int


class _Collector:
    def __init__(self, sink: Sink, max_bytes: int) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.header_field = b""
        self.header_value = b""
        self.disposition: dict[bytes, bytes] = {}
        self.in_file = False
        self.other_bytes = 0
        self.size = 0
        self.filename: str | None = None

    def on_part_begin(self) -> None:
        self.disposition = {}
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            self.disposition = parse_options_header(self.header_value)[1]
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        if self.disposition.get(b"name") == FIELD.encode() and b"filename" in self.disposition:
            if self.filename is not None:
                raise ApiError(422, "too_many_files", "send one file per request")
            self.filename = self.disposition[b"filename"].decode("utf-8", "replace")
            self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise ApiError(413, "too_large", f"the image is over the {self.max_bytes}-byte limit")
            self.sink.write(memoryview(data)[start:end])
        else:
            self.other_bytes += end - start
            if self.other_bytes > MAX_OTHER_FIELD_BYTES:
                raise ApiError(413, "too_large", "form fields other than the file are too large")

    def on_part_end(self) -> None:
        self.in_file = False


async def receive_file(
    content_type: str | None, content_length: str | None, chunks: AsyncIterator[bytes], sink: Sink, max_bytes: int
) -> Received:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(415, "not_multipart", f"send the image as multipart/form-data, field `{FIELD}`")
    # The envelope adds headers and boundaries; anything far beyond the limit is refused before it is read.
    if content_length and content_length.isdigit() and int(content_length) > max_bytes + 64 * 1024:
        raise ApiError(413, "too_large", f"the image is over the {max_bytes}-byte limit")
    collector = _Collector(sink, max_bytes)
    callbacks = {name: getattr(collector, name) for name in dir(collector) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    async for chunk in chunks:
        parser.write(chunk)
    parser.finalize()
    if collector.filename is None:
        raise ApiError(422, "no_file", f"the form has no file field `{FIELD}`")
    if collector.size == 0:
        raise ApiError(422, "empty_file", "the file is empty")
    return Received(collector.filename, collector.size)
