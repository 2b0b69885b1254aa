"""Buckets named in import and export requests (`gs://BUCKET/path`, `s3://BUCKET/path`, `file:///path`),
and the object-name wildcards of ImportDicomData.

By default `gs://NAME/...` is the folder `<data dir>/buckets/NAME/...`, so the embedded store needs no
cloud account; with `gcs_backend="gcs"` it is real Google Cloud Storage. `s3://` goes to S3 or any
S3-compatible endpoint (the usual AWS_* variables, AWS_ENDPOINT_URL included) and `file://` to a local
path. All of them go through obstore, as blobs do."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import obstore
from obstore.store import LocalStore, from_url

from dicomlake.errors import DicomlakeError, InvalidArgument, NotFound, Unavailable
from dicomlake.storage.blobs import write_local

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_DOUBLE_STAR_TAIL = re.compile(r"^\*\*(\.[A-Za-z0-9_-]+)?$")


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
    if not path:
        raise InvalidArgument(f"invalid source URI {uri!r}: name objects after the bucket, e.g. gs://{bucket}/dir/**")
    if "**" in path:
        head, _, tail = path.partition("**")
        if "*" in head or "?" in head or not _DOUBLE_STAR_TAIL.match("**" + tail):
            raise InvalidArgument(
                f"invalid source URI {uri!r}: '**' must be the only wildcard and come last, optionally followed "
                "by an extension such as '.dcm'"
            )
        extension = re.escape(tail)
        return ObjectPattern(uri, scheme, bucket, head, re.compile(re.escape(head) + ".*" + extension, re.DOTALL))
    if "*" not in path and "?" not in path:
        return ObjectPattern(uri, scheme, bucket, path, None)
    first = min(i for i in (path.find("*"), path.find("?")) if i >= 0)
    regex = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in path)
    return ObjectPattern(uri, scheme, bucket, path[:first], re.compile(regex, re.DOTALL))


def split_uri(uri: str) -> tuple[str, str, str]:
    """'gs://bucket/a/b' -> ('gs', 'bucket', 'a/b'); file URIs have no bucket: ('file', '', '/abs/path').
    Parsed by hand: '?' is a wildcard here, not the start of a query."""
    scheme, sep, rest = uri.partition("://")
    if scheme == "file" and sep:
        if not rest.startswith("/"):
            raise InvalidArgument(f"invalid file URI {uri!r}: use file:///absolute/path")
        return "file", "", unquote(rest)
    if scheme not in ("gs", "s3") or not sep:
        raise InvalidArgument(f"invalid URI {uri!r}: expected gs://BUCKET/path, s3://BUCKET/path or file:///path")
    bucket, _, path = rest.partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise InvalidArgument(f"invalid bucket name {bucket!r} in {uri!r}")
    return scheme, bucket, path


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Buckets:
    """Open the object store behind a URI and list, read and write objects in it."""

    def __init__(self, data_dir: Path, gcs_backend: str = "local") -> None:
        if gcs_backend not in ("local", "gcs"):
            raise ValueError(f"gcs_backend must be 'local' or 'gcs', not {gcs_backend!r}")
        self.root = data_dir / "buckets"
        self.gcs_backend = gcs_backend
        self._stores: dict[tuple[str, str], obstore.store.ObjectStore] = {}
        # Folders behind local buckets, read and written with plain file calls (ten times cheaper).
        self._folders: dict[tuple[str, str], Path] = {}

    def open(self, scheme: str, bucket: str) -> obstore.store.ObjectStore:
        store = self._stores.get((scheme, bucket))
        if store is None:
            if scheme == "file":
                store = LocalStore("/")
                self._folders[(scheme, bucket)] = Path("/")
            elif scheme == "gs" and self.gcs_backend == "local":
                folder = self.root / bucket
                if not folder.is_dir():
                    raise InvalidArgument(f"bucket gs://{bucket} does not exist (no folder {folder})")
                store = LocalStore(folder)
                self._folders[(scheme, bucket)] = folder
            else:
                store = from_url(f"{scheme}://{bucket}")
            self._stores[(scheme, bucket)] = store
        return store

    def list(self, pattern: ObjectPattern) -> Iterator[ObjectInfo]:
        """The matching objects, streamed page by page, never all in memory."""
        store = self.open(pattern.scheme, pattern.bucket)
        prefix = pattern.prefix.lstrip("/") if pattern.scheme == "file" else pattern.prefix
        if pattern.regex is None:
            try:
                size = int(obstore.head(store, prefix)["size"])
            except (FileNotFoundError, obstore.exceptions.NotFoundError):
                return
            yield ObjectInfo(pattern.prefix, size)
            return
        # Listing takes whole path segments: start from the last complete folder of the literal prefix.
        folder = prefix.rpartition("/")[0]
        try:
            for batch in obstore.list(store, folder or None, chunk_size=1000):
                for meta in batch:
                    name = f"/{meta['path']}" if pattern.scheme == "file" else meta["path"]
                    if pattern.matches(name):
                        yield ObjectInfo(name, int(meta["size"]))
        except obstore.exceptions.BaseError as exc:
            raise _readable(exc, pattern.uri) from None

    def get(self, uri: str) -> bytes:
        scheme, bucket, path = split_uri(uri)
        store = self.open(scheme, bucket)
        folder = self._folders.get((scheme, bucket))
        if folder is not None:
            return _local(folder, path, uri).read_bytes()
        return obstore.get(store, path).bytes().to_bytes()

    def lines(self, uri: str) -> Iterator[str]:
        """The object's text lines (UTF-8, `\n` or `\r\n`), streamed."""
        scheme, bucket, path = split_uri(uri)
        stream = obstore.get(self.open(scheme, bucket), path.lstrip("/") if scheme == "file" else path).stream()
        rest = b""
        for chunk in stream:
            rest += bytes(chunk)
            *complete, rest = rest.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", errors="replace")

    def put(self, uri: str, data: bytes) -> None:
        scheme, bucket, path = split_uri(uri)
        store = self.open(scheme, bucket)
        folder = self._folders.get((scheme, bucket))
        if folder is not None:
            write_local(_local(folder, path, uri), data)
            return
        obstore.put(
            store,
            path,
            data,
            use_multipart=len(data) > 64 * 1024 * 1024,
        )


def _local(folder: Path, path: str, uri: str) -> Path:
    if ".." in path.split("/"):
        raise InvalidArgument(f"invalid object name in {uri!r}: '..' is not allowed")
    return folder / path.lstrip("/")


def _readable(exc: Exception, uri: str) -> DicomlakeError:
    """An object-store failure as one line a user can act on."""
    text = str(exc)
    if isinstance(exc, obstore.exceptions.NotFoundError) or "NoSuchBucket" in text:
        return NotFound(f"{uri}: the bucket or object does not exist")
    if isinstance(exc, obstore.exceptions.PermissionDeniedError | obstore.exceptions.UnauthenticatedError):
        return Unavailable(f"{uri}: access denied by the object store")
    return Unavailable(f"{uri}: the object store failed: {text.splitlines()[0][:300] if text else type(exc).__name__}")
