"""Object storage behind one narrow interface (obstore): a local directory by default, or S3, GCS, Azure
and memory by URL. Writes are atomic: a reader sees a whole object or none."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, from_url

from dicomlake.storage.journal import Journal

__all__ = ["BlobStore", "NotFoundError"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024


class BlobStore:
    def __init__(self, url: str, journal: Journal) -> None:
        self.url = url
        self.journal = journal
        parsed = urlparse(url)
        self._root: Path | None = None
        if parsed.scheme == "file":
            self._root = Path(unquote(parsed.path))
            self._root.mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(self._root)
        else:
            self._store = from_url(url)

    def put(self, key: str, data: bytes | IO[bytes] | Path) -> None:
        if self._root is not None and isinstance(data, bytes | memoryview):
            # Written in place, not staged and renamed: no index row names this fresh key before the
            # write is complete, and the journal lists it for recovery should the process die mid-write.
            write_local(self._root / key, data, staged=False)
            return
        # A single request is three times cheaper than a multipart upload for the small objects that
        # make up most of a DICOM archive; multipart is for what single requests cannot carry.
        multipart = not isinstance(data, bytes | memoryview) or len(data) > MULTIPART_THRESHOLD
        obstore.put(self._store, key, data, use_multipart=multipart)

    def get(self, key: str) -> bytes:
        if self._root is not None:
            # A plain read is ten times faster than going through obstore for a local file.
            try:
                return (self._root / key).read_bytes()
            except FileNotFoundError:
                raise NotFoundError(f"no object {key}") from None
        return obstore.get(self._store, key).bytes().to_bytes()

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        for chunk in obstore.get(self._store, key).stream(min_chunk_size=chunk_size):
            yield bytes(chunk)

    def delete(self, key: str) -> None:
        # obstore reports a missing local file as FileNotFoundError, a missing remote object as NotFoundError.
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            obstore.delete(self._store, key)

    def discard(self, key: str) -> None:
        """Delete an object and whatever a write of it interrupted by a crash left behind."""
        self.delete(key)
        if self._root is not None:
            # A local put stages into "<key>#<n>" before its atomic rename.
            path = self._root / key
            for partial in path.parent.glob(path.name + "#*"):
                partial.unlink(missing_ok=True)


def write_local(path: Path, data: bytes | memoryview, staged: bool = True) -> None:
    """Write a local object atomically: stage it as "<name>#<n>" beside its place, then rename, as obstore's
    LocalStore does (so `discard` cleans up after either), at a tenth of the cost for small objects.
    `staged=False` writes the new file in place, for names nobody reads before the write is over."""
    staging = path.with_name(f"{path.name}#{uuid.uuid4().hex[:12]}") if staged else path
    try:
        f = open(staging, "wb")  # noqa: SIM115 - the directory is created only when this fails
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(staging, "wb")  # noqa: SIM115
    try:
        with f:
            f.write(data)
        if staged:
            os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
