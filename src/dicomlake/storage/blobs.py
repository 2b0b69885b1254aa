"""Object storage behind one narrow interface (obstore): a local directory by default, or S3, GCS, Azure
and memory by URL. Writes are atomic: a reader sees a whole object or none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, from_url

__all__ = ["BlobStore", "NotFoundError"]


class BlobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.scheme == "file":
            root = Path(unquote(parsed.path))
            root.mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(root)
        else:
            self._store = from_url(url)

    def put(self, key: str, data: bytes | IO[bytes] | Path) -> None:
        obstore.put(self._store, key, data)

    def get(self, key: str) -> bytes:
        return obstore.get(self._store, key).bytes().to_bytes()

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        for chunk in obstore.get(self._store, key).stream(min_chunk_size=chunk_size):
            yield bytes(chunk)

    def size(self, key: str) -> int:
        return int(obstore.head(self._store, key)["size"])

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except NotFoundError:
            pass

    def keys(self, prefix: str = "") -> Iterator[str]:
        for batch in obstore.list(self._store, prefix or None, chunk_size=1000):
            for meta in batch:
                yield meta["path"]
