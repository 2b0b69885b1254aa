"""Buckets named in import and export requests (`gs://BUCKET/path`, `s3://BUCKET/path`, `file:///path`),
the object-name rules they all follow, and the object-name wildcards of ImportDicomData.

By default `gs://NAME/...` is the folder `<data dir>/buckets/NAME/...`, so the embedded store needs no
cloud account; with `gcs_backend="gcs"` it is real Google Cloud Storage. `s3://` goes to S3 or any
S3-compatible endpoint (the usual AWS_* variables, AWS_ENDPOINT_URL included) through obstore, as blobs
do. `file://` reaches only the folders the operator lists (DICOMLAKE_FILE_ROOTS).

A local folder stays a bucket: below its root every path is walked one segment at a time from an open
directory, never following a symbolic link, and only regular files are read; a symlink, FIFO, device or
socket is refused with FAILED_PRECONDITION. Objects are written under a random temporary name, synced,
then renamed into place inside the same opened directory."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import obstore
from obstore.store import from_url

from dicomlake.errors import DicomlakeError, FailedPrecondition, InvalidArgument, NotFound, Unavailable

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_DOUBLE_STAR_TAIL = re.compile(r"^\*\*(\.[A-Za-z0-9_-]+)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Google Cloud Storage's limits on object names, applied to every kind of bucket.
MAX_NAME_BYTES = 1024
MAX_SEGMENT_BYTES = 255
_RESERVED_PREFIX = ".well-known/acme-challenge/"
# The most an export appends to its uriPrefix: "/STUDY/SERIES/INSTANCE" with 64-character UIDs, then
# "/FRAME.png" with a 10-digit frame number.
EXPORT_SUFFIX_BYTES = 3 * (1 + 64) + len("/0123456789.png")
# The longest line a filter file may hold: a resource path of three 64-character UIDs, with room to spare.
MAX_LINE_BYTES = 1024

FILE_ROOTS_SETTING = "DICOMLAKE_FILE_ROOTS"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ObjectPattern:
    """Which objects of one bucket an import takes: a literal prefix to list, and a test for each name."""

    uri: str
    scheme: str
    bucket: str
    prefix: str
    regex: re.Pattern[str] | None  # None: the single object named `prefix`

    def matches(self, name: str) -> bool:
        if self.regex is None:
            return name == self.prefix
        return self.regex.fullmatch(name) is not None


def parse_pattern(uri: str) -> ObjectPattern:
    """Validate an import URI with the wildcard rules of ImportDicomData: `*` is any run of characters
    within one path segment, `?` one such character, and `**` any run including `/`, allowed once, only
    at the end, and optionally followed by an extension (`gs://b/dir/**.dcm`)."""
    scheme, bucket, path = split_uri(uri)
    if not path or path == "/":
        raise InvalidArgument(
            f"invalid source URI {shown(uri)}: name objects after the bucket, e.g. gs://BUCKET/dir/**"
        )
    check_name(_object_name(scheme, path), uri, wildcards=True)
    if "**" in path:
        head, _, tail = path.partition("**")
        if "*" in head or "?" in head or not _DOUBLE_STAR_TAIL.match("**" + tail):
            raise InvalidArgument(
                f"invalid source URI {shown(uri)}: '**' must be the only wildcard and come last, optionally "
                "followed by an extension such as '.dcm'"
            )
        extension = re.escape(tail)
        return ObjectPattern(uri, scheme, bucket, head, re.compile(re.escape(head) + ".*" + extension, re.DOTALL))
    if "*" not in path and "?" not in path:
        return ObjectPattern(uri, scheme, bucket, path, None)
    first = min(i for i in (path.find("*"), path.find("?")) if i >= 0)
    regex = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in path)
    return ObjectPattern(uri, scheme, bucket, path[:first], re.compile(regex, re.DOTALL))


def parse_object(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, path) of a URI that names one object (a filter file, an object to read or write)."""
    scheme, bucket, path = split_uri(uri)
    check_name(_object_name(scheme, path), uri)
    return scheme, bucket, path


def parse_prefix(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, path) of an export's uriPrefix: empty or a folder (a trailing '/' is fine), with room
    for the longest object name an export appends to it."""
    scheme, bucket, path = split_uri(uri)
    name = _object_name(scheme, path)
    folder = name[:-1] if name.endswith("/") else name
    if folder:
        check_name(folder, uri, room=EXPORT_SUFFIX_BYTES)
    return scheme, bucket, path


def split_uri(uri: str) -> tuple[str, str, str]:
    """'gs://bucket/a/b' -> ('gs', 'bucket', 'a/b'); file URIs have no bucket: ('file', '', '/abs/path').
    Parsed by hand: '?' is a wildcard here, not the start of a query. The object name is not checked."""
    scheme, sep, rest = uri.partition("://")
    if scheme == "file" and sep:
        if not rest.startswith("/"):
            raise InvalidArgument(f"invalid file URI {shown(uri)}: use file:///absolute/path")
        return "file", "", unquote(rest)
    if scheme not in ("gs", "s3") or not sep:
        raise InvalidArgument(f"invalid URI {shown(uri)}: expected gs://BUCKET/path, s3://BUCKET/path or file:///path")
    bucket, _, path = rest.partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise InvalidArgument(f"invalid bucket name {shown(bucket)} in {shown(uri)}")
    return scheme, bucket, path


def _object_name(scheme: str, path: str) -> str:
    """The object name in a URI's path: a file URI's absolute path without its leading '/'."""
    return path[1:] if scheme == "file" else path


def check_name(name: str, uri: str, wildcards: bool = False, room: int = 0) -> None:
    """INVALID_ARGUMENT unless `name` (of an object in `uri`) is a valid object name: 1-1024 bytes of UTF-8
    (less `room` for what is appended to it), no control characters, '#', '[' or ']', no '*' or '?' unless
    `wildcards`, no empty, '.' or '..' segment, none over 255 bytes, not reserved by Cloud Storage."""

    def invalid(reason: str) -> InvalidArgument:
        return InvalidArgument(f"invalid object name in {shown(uri)}: {reason}")

    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid("it is not valid UTF-8") from None
    if not name:
        raise invalid("it is empty")
    if size > MAX_NAME_BYTES - room:
        limit = f"{MAX_NAME_BYTES - room} bytes, leaving room for the names an export appends" if room else ""
        raise invalid(f"it is {size} bytes long; the limit is {limit or f'{MAX_NAME_BYTES} bytes'}")
    if _CONTROL.search(name):
        raise invalid("it contains a control character")
    forbidden = sorted({c for c in name if c in "#[]" or (c in "*?" and not wildcards)})
    if forbidden:
        raise invalid(f"it contains {' and '.join(repr(c) for c in forbidden)}, not allowed in object names")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise invalid(f"it has an {'empty' if not segment else repr(segment)} path segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise invalid(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if (name + "/").startswith(_RESERVED_PREFIX):
        raise invalid(f"names under {_RESERVED_PREFIX} are reserved")


def shown(text: str, limit: int = 120) -> str:
    """A URI or name as an error message shows it: printable, and short whatever its length."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


@dataclass(frozen=True)
class _Local:
    """A local bucket: its root folder, the object name below it, and what the bucket's own object names
    put before that ('/ROOT/' for file URIs, nothing for gs://)."""

    root: Path
    name: str
    base: str = ""


class Buckets:
    """Open the object store behind a URI and list, read and write objects in it."""

    def __init__(self, data_dir: Path, gcs_backend: str = "local", file_roots: Iterable[Path] = ()) -> None:
        if gcs_backend not in ("local", "gcs"):
            raise ValueError(f"gcs_backend must be 'local' or 'gcs', not {gcs_backend!r}")
        self.root = data_dir / "buckets"
        self.gcs_backend = gcs_backend
        self.file_roots = tuple(Path(os.path.normpath(root)) for root in file_roots)
        self._stores: dict[tuple[str, str], obstore.store.ObjectStore] = {}

    def check(self, scheme: str, bucket: str, path: str, uri: str) -> None:
        """INVALID_ARGUMENT unless the bucket is there to use (a local folder that exists, a permitted root)."""
        self._locate(scheme, bucket, path, uri)

    def _locate(self, scheme: str, bucket: str, path: str, uri: str) -> _Local | obstore.store.ObjectStore:
        if scheme == "file":
            for root in self.file_roots:
                base = str(root).rstrip("/")
                if path.rstrip("/") == base or path.startswith(base + "/"):
                    return _Local(root, path[len(base) :].strip("/"), base + "/")
            if not self.file_roots:
                raise InvalidArgument(f"file:// URIs are not allowed on this server: {FILE_ROOTS_SETTING} lists none")
            raise InvalidArgument(f"{shown(uri)} is not under a folder listed in {FILE_ROOTS_SETTING}")
        if scheme == "gs" and self.gcs_backend == "local":
            folder = self.root / bucket
            if not folder.is_dir():
                raise InvalidArgument(f"bucket gs://{bucket} does not exist (no folder {folder})")
            return _Local(folder, path)
        store = self._stores.get((scheme, bucket))
        if store is None:
            store = self._stores[(scheme, bucket)] = from_url(f"{scheme}://{bucket}")
        return store

    def list(self, pattern: ObjectPattern) -> Iterator[ObjectInfo]:
        """The matching objects, streamed folder by folder or page by page, never all in memory. In a local
        bucket, a matching symlink, FIFO or device is listed too, so that reading it fails in its own name."""
        place = self._locate(pattern.scheme, pattern.bucket, pattern.prefix, pattern.uri)
        if isinstance(place, _Local):
            for name, size in _walk(place.root, place.name, pattern.regex is None, pattern.uri):
                if pattern.matches(place.base + name):
                    yield ObjectInfo(place.base + name, size)
            return
        if pattern.regex is None:
            try:
                size = int(obstore.head(place, pattern.prefix)["size"])
            except (FileNotFoundError, obstore.exceptions.NotFoundError):
                return
            yield ObjectInfo(pattern.prefix, size)
            return
        # Listing takes whole path segments: start from the last complete folder of the literal prefix.
        folder = pattern.prefix.rpartition("/")[0]
        try:
            for batch in obstore.list(place, folder or None, chunk_size=1000):
                for meta in batch:
                    if pattern.matches(meta["path"]):
                        yield ObjectInfo(meta["path"], int(meta["size"]))
        except obstore.exceptions.BaseError as exc:
            raise _readable(exc, pattern.uri) from None

    def get(self, uri: str) -> bytes:
        scheme, bucket, path = parse_object(uri)
        place = self._locate(scheme, bucket, path, uri)
        if isinstance(place, _Local):
            with _open_file(place, uri) as f:
                return f.read()
        return obstore.get(place, path).bytes().to_bytes()

    def lines(self, uri: str) -> Iterator[str]:
        """The object's text lines (UTF-8, `\n` or `\r\n`), streamed; INVALID_ARGUMENT at a line longer than
        MAX_LINE_BYTES, which says its number only."""
        scheme, bucket, path = parse_object(uri)
        place = self._locate(scheme, bucket, path, uri)
        if isinstance(place, _Local):
            with _open_file(place, uri) as f:
                yield from _split_lines(iter(lambda: f.read(1 << 16), b""), uri)
            return
        yield from _split_lines((bytes(chunk) for chunk in obstore.get(place, path).stream()), uri)

    def put(self, uri: str, data: bytes) -> None:
        scheme, bucket, path = parse_object(uri)
        place = self._locate(scheme, bucket, path, uri)
        if isinstance(place, _Local):
            try:
                _write(place, data)
            except OSError as exc:
                raise _refused(exc, uri) from None
            return
        obstore.put(place, path, data, use_multipart=len(data) > 64 * 1024 * 1024)


def _split_lines(chunks: Iterator[bytes], uri: str) -> Iterator[str]:
    pending = bytearray()
    number = 0
    for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            number += 1
            yield _line(pending[start:end], number, uri)
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_LINE_BYTES + 1:
            raise InvalidArgument(f"line {number + 1} of {uri} is longer than {MAX_LINE_BYTES} bytes")
    if pending:
        yield _line(pending, number + 1, uri)


def _line(raw: bytearray, number: int, uri: str) -> str:
    if len(raw) > MAX_LINE_BYTES + 1:
        raise InvalidArgument(f"line {number} of {uri} is longer than {MAX_LINE_BYTES} bytes")
    return bytes(raw).rstrip(b"\r").decode("utf-8", errors="replace")


# ---- local folders, walked without following links ----------------------------------------------


@contextmanager
def _directory(root: Path, segments: list[str], create: bool = False) -> Iterator[int]:
    """An open descriptor of the folder `segments` below `root`, reached one segment at a time without
    following a symbolic link (ELOOP at a link, ENOTDIR at anything else that is not a folder); missing
    folders are made when `create`. The root itself is the operator's and may be reached through links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for segment in segments:
            try:
                child = _enter(fd, segment)
            except FileNotFoundError:
                if not create:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(segment, 0o755, dir_fd=fd)
                child = _enter(fd, segment)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _enter(parent: int, segment: str) -> int:
    try:
        return os.open(segment, _DIRECTORY, dir_fd=parent)
    except NotADirectoryError:
        # Linux answers ENOTDIR for a link too when O_DIRECTORY is set: tell the two apart.
        if stat.S_ISLNK(os.stat(segment, dir_fd=parent, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link", segment) from None
        raise


def _refused(exc: OSError, uri: str) -> DicomlakeError:
    """A local path that leads through something other than folders, as the error its object gets."""
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"object {uri} does not exist")
    if exc.errno == errno.ELOOP:
        return FailedPrecondition(f"{uri} is reached through a symbolic link, which buckets do not follow")
    if exc.errno == errno.ENOTDIR:
        return FailedPrecondition(f"{uri} is reached through a file where a folder should be")
    if exc.errno == errno.EISDIR:
        return FailedPrecondition(f"{uri} is a folder: no object can be written in its place")
    return Unavailable(f"cannot use {uri}: {exc.strerror}")


@contextmanager
def _open_file(place: _Local, uri: str) -> Iterator[io.FileIO]:
    """The regular file `place` names, open for reading; FAILED_PRECONDITION for anything else."""
    *folders, name = place.name.split("/")
    try:
        with _directory(place.root, folders) as parent:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise FailedPrecondition(f"{uri} is {_kind(mode)}, not a regular file: it is not read")
            # O_NONBLOCK: a FIFO swapped in since the check must not hang the open.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        raise _refused(exc, uri) from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FailedPrecondition(f"{uri} is not a regular file: it is not read")
        yield f


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _walk(root: Path, start: str, single: bool, uri: str) -> Iterator[tuple[str, int]]:
    """(name below `root`, size) of every entry but folders under the folder part of `start` (only `start`
    itself when `single`), each folder's entries in name order; folders are entered only if they are real
    folders. Links and other entries that are not regular files come with size 0: reading them fails."""
    folder, _, last = start.rpartition("/")
    try:
        with _directory(root, folder.split("/") if folder else []) as parent:
            if single:
                info = os.stat(last, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(info.st_mode):
                    yield start, info.st_size if stat.S_ISREG(info.st_mode) else 0
                return
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing of that name, as in a bucket where the folder is an object
    except OSError as exc:
        if single:
            yield start, 0  # reading it says why it is refused
            return
        raise _refused(exc, uri) from None
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with _directory(root, current.split("/") if current else []) as fd, os.scandir(fd) as scan:
                found = sorted(
                    ((e.name, e.is_dir(follow_symlinks=False), e.stat(follow_symlinks=False)) for e in scan),
                    key=lambda item: item[0],
                )
        except OSError:
            continue  # gone, or replaced by a link, since its folder was read
        subfolders = []
        for name, is_dir, info in found:
            path = f"{current}/{name}" if current else name
            if not is_dir:
                yield path, info.st_size if stat.S_ISREG(info.st_mode) else 0
            # Only folders that can hold a match of the literal start, and whose names fit the limit.
            elif (path.startswith(start) or start.startswith(path + "/")) and len(path) < MAX_NAME_BYTES:
                subfolders.append(path)
        pending.extend(reversed(subfolders))


def _write(place: _Local, data: bytes) -> None:
    """Write the object atomically and durably: a random temporary name in its folder, synced, then renamed
    over the name, all through the folder's descriptor (a link at the name is replaced, not followed)."""
    *folders, name = place.name.split("/")
    temporary = f".dicomlake-{uuid.uuid4().hex}.tmp"
    with _directory(place.root, folders, create=True) as parent:
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=parent)
            raise


def _readable(exc: Exception, uri: str) -> DicomlakeError:
    """An object-store failure as one line a user can act on."""
    text = str(exc)
    if isinstance(exc, obstore.exceptions.NotFoundError) or "NoSuchBucket" in text:
        return NotFound(f"{uri}: the bucket or object does not exist")
    if isinstance(exc, obstore.exceptions.PermissionDeniedError | obstore.exceptions.UnauthenticatedError):
        return Unavailable(f"{uri}: access denied by the object store")
    return Unavailable(f"{uri}: the object store failed: {text.splitlines()[0][:300] if text else type(exc).__name__}")
