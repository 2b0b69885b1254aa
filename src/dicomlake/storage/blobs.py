"""Object storage behind one narrow interface (obstore): a local directory by default, or S3, GCS, Azure
and memory by URL. Every key passes `check_key`, so none can name a place outside the store's root.

Durable by default: when `put_many` returns, its objects survive a power cut. An object store's PUT is
durable once it completes; a local file is written, then every file of the batch and every directory
that gained an entry is synced, so a batch pays its syncs together, before the one index commit that
makes its instances visible."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import NotFoundError as _ObjectMissing
from obstore.store import LocalStore, ObjectStore, from_url

from dicomlake.errors import NotFound
from dicomlake.storage.journal import Journal

__all__ = ["BlobStore", "NotFoundError", "UnsafeKey", "check_key"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
# Threads per local blob store that sync the files and directories of batches side by side.
SYNC_THREADS = 16

# A bytes-like value: bytes, or a part of a request body mapped from its scratch file.
Buffer = bytes | memoryview | mmap.mmap

_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")


class UnsafeKey(ValueError):
    """A key that could leave the blob root or mean different things to different backends."""


class NotFoundError(NotFound):
    """No object under the key: an instance whose blob is gone answers 404, not 500."""


def check_key(key: str) -> str:
    """`key` if it is a plain relative path of non-empty segments; UnsafeKey otherwise."""
    if not key:
        raise UnsafeKey("a blob key is empty")
    if key.startswith("/"):
        raise UnsafeKey(f"blob key {key[:80]!r} is absolute")
    if _UNSAFE_CHARACTERS.search(key):
        raise UnsafeKey(f"blob key {key[:80]!r} holds a backslash or a control character")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise UnsafeKey(f"blob key {key[:80]!r} has an empty, '.' or '..' segment")
    return key


class BlobStore:
    def __init__(self, url: str, journal: Journal, durable: bool = True) -> None:
        self.url = url
        self.journal = journal
        self.durable = durable
        parsed = urlparse(url)
        self._root: Path | None = None
        self._syncs: ThreadPoolExecutor | None = None
        self._store: ObjectStore
        if parsed.scheme == "file":
            self._root = Path(unquote(parsed.path))
            created = _make_directories(self._root, Path(self._root.anchor))
            if durable:
                for directory in {d.parent for d in created}:
                    _sync_directory(directory)
            self._store = LocalStore(self._root)
            # The syncs of a batch run side by side: a journaling file system commits concurrent syncs
            # together, so a batch-of-one STOW's four syncs (file, series, study and store directories) cost
            # 0.4-0.6 ms instead of 1.2-3.9 ms one after the other on this machine's ext4.
            self._syncs = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="blob-sync") if durable else None
        else:
            self._store = from_url(url)

    def put(self, key: str, data: Buffer) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Sequence[tuple[str, Buffer]]) -> None:
        """Write objects under fresh keys; once this returns they are all durable (unless `durable` is off).
        Local files are written in place, not staged and renamed: no index row names a fresh key before
        the write is over, and the journal lists the keys for recovery should the process die mid-write."""
        for key, _ in items:
            check_key(key)
        if self._root is None:
            for key, data in items:
                # A single request is three times cheaper than a multipart upload for the small objects
                # that make up most of a DICOM archive; multipart is for what single requests cannot carry.
                obstore.put(self._store, key, data, use_multipart=len(data) > MULTIPART_THRESHOLD)
            return
        created: list[Path] = []
        files: list[IO[bytes]] = []
        try:
            for key, data in items:
                path = self._root / key
                try:
                    new: IO[bytes] = open(path, "xb")  # noqa: SIM115 - closed below, after the batch's syncs
                except FileNotFoundError:
                    created += _make_directories(path.parent, self._root)
                    new = open(path, "xb")  # noqa: SIM115
                files.append(new)
                new.write(data)
            for f in files:
                f.flush()
            if self._syncs is not None:
                # A directory created by a concurrent writer and not yet synced by it is covered too on
                # journaling file systems (ext4, XFS): syncing any entry commits every earlier metadata change.
                directories = {Path(f.name).parent for f in files} | {d.parent for d in created}
                jobs = [self._syncs.submit(os.fsync, f.fileno()) for f in files]
                jobs += [self._syncs.submit(_sync_directory, d) for d in directories]
                wait(jobs)  # all of them, before a failure closes a descriptor another sync still uses
                for job in jobs:
                    job.result()
        finally:
            for f in files:
                f.close()

    def get(self, key: str) -> bytes:
        check_key(key)
        if self._root is not None:
            # A plain read is ten times faster than going through obstore for a local file.
            try:
                return (self._root / key).read_bytes()
            except FileNotFoundError:
                raise _missing(key) from None
        try:
            return obstore.get(self._store, key).bytes().to_bytes()
        except (_ObjectMissing, FileNotFoundError):
            raise _missing(key) from None

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object in chunks; a missing object raises here, before the first chunk is asked for."""
        check_key(key)
        try:
            result = obstore.get(self._store, key)
        except (_ObjectMissing, FileNotFoundError):
            raise _missing(key) from None
        return (bytes(chunk) for chunk in result.stream(min_chunk_size=chunk_size))

    def require(self, keys: Iterable[str]) -> None:
        """NotFoundError for the first of `keys` without an object, so that a response built from several
        objects can answer 404 before it starts. Local files only: an object store does not lose what it
        acknowledged, and one request per object would cost more than the answer."""
        if self._root is None:
            return
        for key in keys:
            if not (self._root / check_key(key)).is_file():
                raise _missing(key)

    def delete(self, key: str) -> None:
        check_key(key)
        # obstore reports a missing local file as FileNotFoundError, a missing remote object as NotFoundError.
        with contextlib.suppress(_ObjectMissing, FileNotFoundError):
            obstore.delete(self._store, key)

    def discard(self, key: str) -> None:
        """Delete an object and whatever a write of it interrupted by a crash left behind."""
        self.delete(key)
        if self._root is not None:
            # obstore's LocalStore (and versions of this module before in-place writes) staged a put as
            # "<key>#<n>" before its atomic rename.
            path = self._root / key
            for partial in path.parent.glob(path.name + "#*"):
                partial.unlink(missing_ok=True)


def _missing(key: str) -> NotFoundError:
    return NotFoundError(f"the stored data {key} is missing from the blob store")


def _make_directories(directory: Path, stop: Path) -> list[Path]:
    """Create `directory` and its missing parents below `stop`; the ones this call created, outermost first
    (one that appears meanwhile is counted too: its creator may not have synced it yet)."""
    missing = []
    while directory != stop and not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
    return missing[::-1]


def _sync_directory(directory: Path) -> None:
    """Make a directory's entries durable: a new file's name is in its directory, not in the file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
