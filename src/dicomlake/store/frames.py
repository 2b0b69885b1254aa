"""Frames and rendered frames of stored instances (WADO-RS /frames and /rendered), with two per-process
caches: viewers ask for the same thumbnail and the same frame again and again while a user scrolls.

- Rendered images, bounded in bytes (RENDERED_CACHE_BYTES, least recently used out first; an image over a
  sixteenth of the bound is not kept). A hit costs neither the blob read nor the decoding.
- Pixel headers (where each frame lies, how to display it), bounded in count (HEADER_CACHE_ENTRIES): a
  frame of a multi-frame instance is then sliced out of the blob without walking its header again.

Both are keyed by the instance's blob key. A blob key is never reused: an instance stored again after a
delete, by this process or any other sharing the index, gets a fresh key (instances.store_instances adds
128 random bits), so an entry can never stand for different bytes and needs no invalidation across
processes. A deleted instance is never served from them either, because every request looks the instance
up in the index first and gets NotFound; its entries age out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dicomlake.dicom import pixelheader, pixels
from dicomlake.dicom.pixelheader import PixelHeader
from dicomlake.storage.blobs import BlobStore
from dicomlake.store.instances import InstanceRow

# 32 MiB per server process holds some 20,000 thumbnails of 64x64 (1.5 KB) or 1,000 JPEGs of 512x512.
RENDERED_CACHE_BYTES = 32 * 1024 * 1024
# A header is under 1 KB but for its fragment spans (16 bytes a frame of encapsulated data).
HEADER_CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class Rendering:
    """How to render: one of `pixels.render`'s media types, an optional (width, height) box and a quality."""

    media_type: str
    viewport: tuple[int, int] | None
    quality: int


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used map bounded by the summed `weight` of its values (1 each unless given)."""

    def __init__(self, bound: int, weight: Callable[[V], int] | None = None, largest: int | None = None) -> None:
        self.bound = bound
        self.size = 0
        self._weight = weight
        self._largest = bound if largest is None else largest
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        if weight > self._largest:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= self._weigh(old)
            self._items[key] = value
            self.size += weight
            while self.size > self.bound:
                _, evicted = self._items.popitem(last=False)
                self.size -= self._weigh(evicted)

    def __len__(self) -> int:
        return len(self._items)

    def _weigh(self, value: V) -> int:
        return self._weight(value) if self._weight is not None else 1


def rendered_cache(max_bytes: int) -> BoundedCache[tuple[str, int, Rendering], bytes]:
    return BoundedCache(max_bytes, weight=len, largest=max_bytes // 16)


rendered = rendered_cache(RENDERED_CACHE_BYTES)
headers: BoundedCache[str, PixelHeader] = BoundedCache(HEADER_CACHE_ENTRIES)


def render_frames(blobs: BlobStore, row: InstanceRow, numbers: list[int], rendering: Rendering) -> list[bytes]:
    """The frames `numbers` of the instance in `row`, rendered; PixelError if it cannot be rendered."""
    keys = [(row.blob_key, number, rendering) for number in numbers]
    images = [rendered.get(key) for key in keys]
    if all(image is not None for image in images):
        return [image for image in images if image is not None]
    data = blobs.get(row.blob_key)
    header = _header(row.blob_key, data)
    out = []
    for key, image in zip(keys, images, strict=True):
        if image is None:
            image = pixels.render(
                data, key[1], rendering.media_type, rendering.viewport, rendering.quality, header=header
            )
            rendered.put(key, image)
        out.append(image)
    return out


def stored_frames(blobs: BlobStore, row: InstanceRow, numbers: list[int], transfer_syntax: str) -> list[bytes]:
    """`pixels.frames` of the instance in `row`, its header walked once per process."""
    data = blobs.get(row.blob_key)
    return pixels.frames(data, numbers, transfer_syntax, header=_header(row.blob_key, data))


def _header(blob_key: str, data: bytes) -> PixelHeader | None:
    header = headers.get(blob_key)
    if header is None:
        header = pixelheader.read(data)
        if header is not None:
            headers.put(blob_key, header)
    return header
