"""multipart/related bodies (RFC 2387): an incremental reader that never holds more than one part in
memory (large parts spill to a scratch file), and the writer used for WADO-RS responses."""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

from dicomlake.errors import InvalidArgument

MAX_HEADER_BYTES = 16 * 1024
IN_MEMORY_PART_BYTES = 32 * 1024 * 1024
OUTPUT_CHUNK_BYTES = 1024 * 1024


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """'multipart/related; type="application/dicom"; boundary=x' -> ('multipart/related', {...})."""
    message = Message()
    message["content-type"] = value or ""
    media_type = message.get_content_type().lower() if value else ""
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]} if value else {}
    return media_type, params


@dataclass
class Part:
    headers: dict[str, str]
    data: bytes | mmap.mmap
    _file: IO[bytes] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()
        if self._file is not None:
            self._file.close()


class _PartBuffer:
    """Collects one part's bytes in memory, moving them to a scratch file past IN_MEMORY_PART_BYTES."""

    def __init__(self, scratch_dir: Path) -> None:
        self.scratch_dir = scratch_dir
        self.chunks: list[bytes] = []
        self.size = 0
        self.file: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.file is None and self.size > IN_MEMORY_PART_BYTES:
            # Owned by the Part this buffer becomes, which closes it: no with block.
            self.file = tempfile.NamedTemporaryFile(dir=self.scratch_dir, prefix="part-", delete=True)  # noqa: SIM115
            for chunk in self.chunks:
                self.file.write(chunk)
            self.chunks = []
        if self.file is not None:
            self.file.write(data)
        else:
            self.chunks.append(data)

    def finish(self, headers: dict[str, str]) -> Part:
        if self.file is None:
            return Part(headers, b"".join(self.chunks))
        self.file.flush()
        os.fsync(self.file.fileno())
        mapped = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        return Part(headers, mapped, self.file)


async def read_parts(body: AsyncIterator[bytes], boundary: str, scratch_dir: Path) -> AsyncIterator[Part]:
    """Yield each part of a multipart body as it completes. Raises InvalidArgument on malformed input."""
    if not boundary or len(boundary) > 200:
        raise InvalidArgument("multipart body needs a boundary parameter of 1-200 characters in Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter
    buffer = b""
    state = "preamble"
    headers: dict[str, str] = {}
    part: _PartBuffer | None = None
    async for chunk in body:
        buffer += chunk
        while True:
            if state == "preamble":
                index = buffer.find(delimiter)
                if index < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise InvalidArgument("malformed multipart body: the first boundary delimiter is missing")
                    break
                buffer = buffer[index + len(delimiter) :]
                state = "after-delimiter"
            if state == "after-delimiter":
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    return
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise InvalidArgument("malformed multipart body: part headers are missing or too long")
                    break
                headers = _parse_headers(buffer[:end])
                buffer = buffer[end + 4 :]
                part = _PartBuffer(scratch_dir)
                state = "body"
            if state == "body":
                assert part is not None
                index = buffer.find(separator)
                if index < 0:
                    # Keep a tail that could be the start of a delimiter split across chunks.
                    keep = len(separator) - 1
                    if len(buffer) > keep:
                        part.write(buffer[:-keep])
                        buffer = buffer[-keep:]
                    break
                part.write(buffer[:index])
                buffer = buffer[index + len(separator) :]
                yield part.finish(headers)
                part = None
                state = "after-delimiter"
    if state != "after-delimiter" or buffer[:2] != b"--":
        if state == "body" or state == "after-delimiter":
            raise InvalidArgument("malformed multipart body: it ends before the closing boundary delimiter")
        raise InvalidArgument("malformed multipart body: no part found for the boundary in Content-Type")


async def read_single_part(body: AsyncIterator[bytes], scratch_dir: Path) -> Part:
    """A whole application/dicom body as one Part."""
    buffer = _PartBuffer(scratch_dir)
    async for chunk in body:
        buffer.write(chunk)
    return buffer.finish({"content-type": "application/dicom"})


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    text = block.decode("latin-1").lstrip("\r\n")
    for line in text.split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise InvalidArgument(f"malformed multipart body: bad part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def part_header(content_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def write_parts(boundary: str, parts: Iterable[tuple[str, bytes | Iterable[bytes]]]) -> Iterator[bytes]:
    """Encode (content type, payload) pairs as a multipart/related body; a payload is bytes, or chunks of
    bytes so a large part is never held whole. Small pieces are gathered into chunks of at least
    OUTPUT_CHUNK_BYTES: every chunk of a streamed response costs a trip between threads."""
    delimiter = f"--{boundary}\r\n".encode()
    pending: list[bytes] = []
    size = 0
    for content_type, payload in parts:
        for piece in _part_pieces(delimiter, content_type, payload):
            pending.append(piece)
            size += len(piece)
            if size >= OUTPUT_CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
    pending.append(f"--{boundary}--\r\n".encode())
    yield b"".join(pending)


def _part_pieces(delimiter: bytes, content_type: str, payload: bytes | Iterable[bytes]) -> Iterator[bytes]:
    yield delimiter + part_header(content_type)
    if isinstance(payload, bytes):
        yield payload
    else:
        yield from payload
    yield b"\r\n"
